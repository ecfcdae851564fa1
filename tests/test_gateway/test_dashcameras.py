"""The camera page's shapes: what a page may post (``parse_geometry``) and how they go into
the config's text (``with_geometry``), checked by the camera's own config model."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tepi.drivers.camera.config import CameraConfig
from tepi.gateway.dashcameras import (
    MAX_POINTS,
    MAX_SHAPES,
    camera_geometry,
    parse_geometry,
    with_geometry,
)

pytestmark = pytest.mark.timeout(120)

CAMERA = {"id": "cam-1", "driver": "camera", "url": "http://10.0.0.9/snap.jpg"}
RUNNING = yaml.safe_dump(
    {
        "gateway": {"id": "gw-1"},
        "devices": [
            {"id": "aq-1", "driver": "synthetic"},
            {
                **CAMERA,
                "password_file": "cam-password",
                "analytics": {
                    "fps": 2,
                    "zones": [
                        {
                            "name": "lane",
                            "polygon": [[0, 0], [1, 0], [1, 1]],
                            "stop_line": [[0, 0.9], [1, 0.9]],
                            "length_m": 40,
                        }
                    ],
                    "event_zones": ["lane"],
                },
            },
        ],
    },
    sort_keys=False,
)


def _queue(zone: dict[str, Any]) -> dict[str, Any]:
    """A zone with a queue has both its stop line and its length (the model's rule)."""
    queue = zone.pop("queue", None)
    if queue is not None:
        zone["stop_line"], zone["length_m"] = queue
    return zone


coord = st.floats(0, 1, allow_nan=False)
point = st.lists(coord, min_size=2, max_size=2)
name = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")
geometry = st.fixed_dictionaries(
    {
        "masks": st.lists(st.lists(point, min_size=3, max_size=8), max_size=4),
        "ignore": st.lists(st.lists(point, min_size=3, max_size=8), max_size=3),
        "lines": st.lists(
            st.fixed_dictionaries(
                {"name": name, "points": st.lists(point, min_size=2, max_size=2)}
            ),
            max_size=3,
            unique_by=lambda x: x["name"],
        ),
        "zones": st.lists(
            st.fixed_dictionaries(
                {"name": name, "polygon": st.lists(point, min_size=3, max_size=8)},
                optional={
                    "queue": st.tuples(
                        st.lists(point, min_size=2, max_size=2), st.floats(0.5, 10000)
                    )
                },
            ).map(_queue),
            max_size=3,
            unique_by=lambda x: x["name"],
        ),
    }
)


def device_of(text: str) -> dict[str, Any]:
    devices: list[dict[str, Any]] = yaml.safe_load(text)["devices"]
    return next(d for d in devices if d["id"] == "cam-1")


@settings(max_examples=150, deadline=None)
@given(geometry)
def test_what_a_page_draws_goes_into_the_config_as_drawn(geo: dict[str, Any]) -> None:
    parsed = parse_geometry(json.dumps(geo))
    dev = device_of(with_geometry(yaml.safe_dump({"devices": [CAMERA]}), "cam-1", parsed))
    try:
        cfg = CameraConfig.model_validate(dev)
    except ValueError as err:
        # The model's own checks, which the page does not repeat (two points of a line the
        # same after rounding): the apply refuses it with the model's words.
        assert "same" in str(err), err  # noqa: PT017
        return
    back = camera_geometry(cfg)
    assert back["masks"] == parsed["masks"]
    assert back["ignore"] == parsed["ignore"]
    assert back["lines"] == parsed["lines"]
    assert back["zones"] == parsed["zones"]
    for zone, drawn_zone in zip(back["zones"], geo["zones"], strict=True):
        assert ("stop_line" in zone) == ("stop_line" in drawn_zone)
        if "length_m" in drawn_zone:
            assert abs(zone["length_m"] - drawn_zone["length_m"]) <= 0.005
    for mask, drawn in zip(back["masks"], geo["masks"], strict=True):
        for (x, y), (x0, y0) in zip(mask, drawn, strict=True):
            assert abs(x - x0) <= 5e-5
            assert abs(y - y0) <= 5e-5
    if not geo["lines"] and not geo["zones"] and not geo["ignore"]:
        assert "analytics" not in dev  # not turned on by a mask alone


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=30,
    )
)
def test_anything_else_a_page_posts_is_a_worded_refusal(doc: Any) -> None:
    try:
        body = orjson.dumps(doc).decode()
    except TypeError:
        return  # not JSON at all (a float too large for orjson): the same refusal below
    try:
        parse_geometry(body)
    except ValueError as err:
        assert str(err)  # noqa: PT017 - any refusal is a sentence for the page


@given(st.binary(max_size=64))
def test_bytes_that_are_not_json_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_geometry(raw.decode("latin-1") + "}{")


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"masks": [[[0, 0], [2, 0], [0, 1]]]}, "a point is not [x, y] within 0..1"),
        ({"masks": [[[0, 0], [True, 0], [0, 1]]]}, "a point is not"),
        ({"masks": [[[0, 0], [1, 0]]]}, "needs 3 to 64 points"),
        ({"ignore": [[[0, 0], [1, 0]]]}, "ignore 1: needs 3 to 64 points"),
        ({"masks": [[[0, 0]] * (MAX_POINTS + 1)]}, "needs 3 to 64 points"),
        ({"masks": [[[0, 0], [1, 0], [0, 1]]] * (MAX_SHAPES + 1)}, "At most 32 shapes"),
        ({"lines": [{"name": "a b", "points": [[0, 0], [1, 1]]}]}, "give a name of letters"),
        ({"lines": [{"name": "x", "points": [[0, 0], [1, 1], [1, 0]]}]}, "needs 2 to 2 points"),
        (
            {"zones": [{"name": "z", "polygon": [[0, 0], [1, 0], [0, 1]]}] * 2},
            "Named more than once: z",
        ),
        ({"masks": [], "stop_lines": []}, "no shapes it could read"),
        (
            {"zones": [{"name": "z", "polygon": [[0, 0], [1, 0], [0, 1]], "length_m": 0}]},
            "z: the length is metres",
        ),
        (
            {"zones": [{"name": "z", "polygon": [[0, 0], [1, 0], [0, 1]], "length_m": "9"}]},
            "z: the length is metres",
        ),
        (
            {"zones": [{"name": "z", "polygon": [[0, 0], [1, 0], [0, 1]], "stop_line": [[0, 0]]}]},
            "z stop line: needs 2 to 2 points",
        ),
        ([1, 2], "no shapes it could read"),
    ],
)
def test_each_bad_shape_is_refused_in_words(doc: Any, words: str) -> None:
    with pytest.raises(ValueError, match=r".") as err:
        parse_geometry(json.dumps(doc))
    assert words in str(err.value), err.value


def test_a_zones_queue_is_set_and_removed_and_the_rest_stays() -> None:
    geo = parse_geometry(
        json.dumps(
            {
                "masks": [[[0, 0], [0.2, 0], [0.2, 0.2]]],
                "zones": [
                    {
                        "name": "lane",
                        "polygon": [[0, 0.5], [1, 0.5], [1, 1]],
                        "stop_line": [[0.9, 0.5], [0.9, 1]],
                        "length_m": 32.5,
                    }
                ],
            }
        )
    )
    text = with_geometry(RUNNING, "cam-1", geo)
    dev = device_of(text)
    zone = dev["analytics"]["zones"][0]
    assert zone["polygon"] == [[0, 0.5], [1, 0.5], [1, 1]]
    assert zone["stop_line"] == [[0.9, 0.5], [0.9, 1]]
    assert zone["length_m"] == 32.5
    assert dev["analytics"]["fps"] == 2
    assert dev["analytics"]["event_zones"] == ["lane"]
    assert "lines" not in dev["analytics"]
    assert dev["password_file"] == "cam-password"
    assert yaml.safe_load(text)["devices"][0] == {"id": "aq-1", "driver": "synthetic"}
    CameraConfig.model_validate(dev)
    # The page sends the zone without its queue: it is gone from the config.
    geo["zones"][0].pop("stop_line")
    geo["zones"][0].pop("length_m")
    zone = device_of(with_geometry(RUNNING, "cam-1", geo))["analytics"]["zones"][0]
    assert set(zone) == {"name", "polygon"}
    # Everything deleted: no masks key, no lines or zones; the analytics' settings stay (the
    # event_zones naming the zone gone is the model's error, worded at the apply).
    empty = device_of(with_geometry(RUNNING, "cam-1", parse_geometry("{}")))
    assert "masks" not in empty
    assert "zones" not in empty["analytics"]
    with pytest.raises(ValueError, match="event_zones: no zone named lane"):
        CameraConfig.model_validate(empty)


def test_a_camera_not_in_the_files_devices_is_refused() -> None:
    with pytest.raises(ValueError, match="not in the config file's own devices"):
        with_geometry(RUNNING, "cam-9", parse_geometry("{}"))
    with pytest.raises(ValueError, match="not in the config file's own devices"):
        with_geometry("gateway: {id: gw}\n", "cam-1", parse_geometry("{}"))
    with pytest.raises(ValueError, match="Not YAML: "):
        with_geometry("devices: [\n", "cam-1", parse_geometry("{}"))
