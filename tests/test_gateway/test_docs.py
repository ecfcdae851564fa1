"""The docs match the code: every config key is in docs/config.md, every payload field in
docs/payload.md, and the docs' examples validate."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tepi.gateway.config import Config
from tepi.gateway.configload import parse_config

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _models(tp: Any) -> list[tuple[type[BaseModel], bool]]:
    """The models inside an annotation, and whether they sit in a list."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _models(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(tp) for m in _models(a)]
    if origin is list:
        return [(m, True) for m, _ in _models(typing.get_args(tp)[0])]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [(tp, False)]
    return []


def key_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path
        for sub, in_list in _models(field.annotation):
            yield from key_paths(sub, f"{path}[]." if in_list else f"{path}.")


def test_every_config_key_is_documented() -> None:
    doc = (DOCS / "config.md").read_text()
    paths = sorted(set(key_paths(Config)))
    assert len(paths) > 40
    missing = [p for p in paths if f"`{p}`" not in doc]
    assert not missing, f"keys missing from docs/config.md: {missing}"


def test_every_field_has_a_description() -> None:
    def walk(model: type[BaseModel]) -> Iterator[str]:
        for name, field in model.model_fields.items():
            if not field.description:
                yield f"{model.__name__}.{name}"
            for sub, _ in _models(field.annotation):
                yield from walk(sub)

    assert list(walk(Config)) == []


def test_config_doc_example_validates() -> None:
    doc = (DOCS / "config.md").read_text()
    example = re.search(r"## A full example\n\n```yaml\n(.*?)```", doc, re.S)
    assert example is not None
    cfg = parse_config(example.group(1), "docs/config.md", check_files=False)
    assert [d.id for d in cfg.devices] == ["aq-station-1", "river-level-3"]


def schema_fields(node: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> Iterator[str]:
    if "$ref" in node:
        yield from schema_fields(defs[node["$ref"].split("/")[-1]], defs, prefix)
        return
    for name, sub in node.get("properties", {}).items():
        yield f"{prefix}{name}"
        yield from schema_fields(sub, defs, f"{prefix}{name}.")
    items = node.get("items")
    if isinstance(items, dict):
        yield from schema_fields(items, defs, prefix.rstrip(".") + "[].")


def test_every_payload_field_is_documented() -> None:
    import json

    schema = json.loads(
        (DOCS.parent / "gateway" / "tepi" / "gateway" / "payload.schema.json").read_text()
    )
    doc = (DOCS / "payload.md").read_text()
    missing = []
    for kind in ("telemetry", "status", "health"):
        for field in schema_fields(schema["$defs"][kind], schema["$defs"]):
            leaf = field.rsplit(".", 1)[-1].removeprefix("readings[]")
            if f"`{field}`" not in doc and f"`{leaf}`" not in doc and f'"{leaf}"' not in doc:
                missing.append(f"{kind}: {field}")
    assert not missing, missing


def test_modbus_doc_example_validates() -> None:
    doc = (DOCS / "modbus.md").read_text()
    example = re.search(r"```yaml\n(devices:.*?)```", doc, re.S)
    assert example is not None
    text = 'gateway: {id: gw}\nuplink: {url: "mqtt://127.0.0.1"}\n' + example.group(1)
    cfg = parse_config(text, "docs/modbus.md", check_files=False)
    regs = {r.name: r for r in getattr(cfg.devices[0], "registers", [])}
    assert regs["energy"].order == "CDAB"
    assert regs["alarm"].kind == "bool"
    assert regs["serial"].width == 4
