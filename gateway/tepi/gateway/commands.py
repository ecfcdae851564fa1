"""Commands from the IOC (issue 19): the request as it arrives on ``{prefix}/{id}/cmd/{name}``,
checked before anything runs; the result as it goes back on ``cmd_result``.

This module is the contract and its checks, pure and synchronous: the models, the per-command
policy (``signed`` / ``unsigned`` / ``disabled``), the Ed25519 signature over a canonical form,
and :func:`check`, which turns a raw MQTT payload into a :class:`Request` or a
:class:`Refused` with a short, stable reason. Executing commands, the exactly-once log
(:mod:`tepi.buffer.commands`) and the MQTT side are wired by the agent.

The canonical form a signature covers (bytes, UTF-8)::

    tepi-cmd-v1\\n{gateway}\\n{command}\\n{id}\\n{issued_ms}\\n{expires_ms}\\n{args}

``issued_ms`` and ``expires_ms`` are the times in integer milliseconds (``round(t * 1000)``),
``args`` is the JSON of the arguments with sorted keys, no whitespace, UTF-8 as is, and
numbers in their shortest round-trip form. The gateway and the command are in it, so a
request signed for one box or one command is worthless for another.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "COMMANDS",
    "DEFAULT_POLICY",
    "MAX_PAYLOAD",
    "REASONS",
    "CommandRequest",
    "Keyring",
    "Policy",
    "Refused",
    "Request",
    "canonical",
    "check",
    "result_payload",
    "sign",
]

Policy = Literal["signed", "unsigned", "disabled"]
MAX_PAYLOAD = 65536  # bytes of a request
# ... but a whole config: a site of a thousand registers is about 100 KB of YAML.
MAX_CONFIG_PAYLOAD = 1 << 20
MAX_ARGS = 32
# Every command, and its default policy: only the harmless ones run by default; those that
# change the box need a signature when enabled.
DEFAULT_POLICY: dict[str, Policy] = {
    "ping": "unsigned",
    "health": "unsigned",
    "read": "unsigned",
    "snapshot": "unsigned",
    "buffer.stats": "unsigned",
    "alarms.ack": "disabled",
    "write": "disabled",
    "poll_rate": "disabled",
    "restart": "disabled",
    "reload": "disabled",
    "logs.tail": "disabled",
    "config.get": "disabled",
    "config.apply": "disabled",
    "config.rollback": "disabled",
    "update": "disabled",
}
COMMANDS = tuple(DEFAULT_POLICY)
# Commands that change the box: ``unsigned`` for them is refused by the config check unless
# the config says so explicitly (``allow_unsigned_changes``).
CHANGES = frozenset({"write", "config.apply", "config.rollback", "update", "restart", "reload"})
# Why a request was refused: short and stable, for counting and for the IOC.
REASONS = (
    "too_large",
    "bad_json",
    "bad_request",
    "unknown_command",
    "disabled",
    "expired",
    "not_yet_valid",
    "too_long_lived",
    "unsigned",
    "unknown_key",
    "bad_signature",
)
_NAME = re.compile(r"^[a-z][a-z0-9_.]{0,31}$")


class Refused(Exception):
    """A request that must not run: ``reason`` one of :data:`REASONS`, ``detail`` for a
    person. ``request_id`` is the request's id when it could be read (the refusal is then
    answered to it)."""

    def __init__(self, reason: str, detail: str, request_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.request_id = request_id


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="The key's id in the config.")
    ed25519: str = Field(min_length=86, max_length=88, description="The 64-byte signature, base64.")


class CommandRequest(BaseModel):
    """A request's JSON, as the IOC sends it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        pattern=r"^[A-Za-z0-9._:-]{1,128}$",
        description="Unique per request: a retry of the same request keeps its id.",
    )
    issued_at: float = Field(gt=0, allow_inf_nan=False, description="UTC seconds.")
    expires_at: float = Field(gt=0, allow_inf_nan=False, description="UTC seconds.")
    args: dict[str, Any] = Field(default_factory=dict, max_length=MAX_ARGS)
    sig: Signature | None = None

    @field_validator("args")
    @classmethod
    def _json_values(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", key):
                raise ValueError(f"argument name {key!r}: letters, digits and _")
            _finite(value, key)
        return v


def _finite(value: Any, where: str, depth: int = 0) -> None:
    if depth > 8:
        raise ValueError(f"{where}: nested too deep")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]", depth + 1)


@dataclass(frozen=True, slots=True)
class Request:
    """A request that passed every check: it may run."""

    command: str
    id: str
    issued_at: float
    expires_at: float
    args: dict[str, Any]
    key: str | None  # the key that signed it; None: unsigned


def canonical(gateway: str, command: str, req: CommandRequest) -> bytes:
    """What a signature covers (the module docstring)."""
    args = json.dumps(
        req.args, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    text = "\n".join(
        (
            "tepi-cmd-v1",
            gateway,
            command,
            req.id,
            str(round(req.issued_at * 1000)),
            str(round(req.expires_at * 1000)),
            args,
        )
    )
    return text.encode()


class Keyring:
    """The public keys of the config, by id (Ed25519, 32 raw bytes each)."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self._keys = {k: Ed25519PublicKey.from_public_bytes(v) for k, v in keys.items()}

    def __contains__(self, key_id: str) -> bool:
        return key_id in self._keys

    def verify(self, key_id: str, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self._keys[key_id].verify(signature, data)
        except InvalidSignature:
            return False
        return True


def sign(
    private_key: bytes, gateway: str, command: str, req: dict[str, Any], key_id: str
) -> dict[str, Any]:
    """``req`` with its ``sig`` (the IOC side: ``tepi remote``, tests). ``private_key``: the
    32-byte Ed25519 seed."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    unsigned = CommandRequest.model_validate({k: v for k, v in req.items() if k != "sig"})
    data = canonical(gateway, command, unsigned)
    value = Ed25519PrivateKey.from_private_bytes(private_key).sign(data)
    return {**req, "sig": {"key": key_id, "ed25519": base64.b64encode(value).decode()}}


def check(
    command: str,
    payload: bytes,
    *,
    gateway: str,
    now: float,
    policy: dict[str, Policy],
    keys: Keyring | None,
    max_lifetime: float,
    clock_skew: float,
) -> Request:
    """The request on ``cmd/{command}``, checked: its size, JSON, shape, the command and its
    policy, its times (against ``now``, UTC seconds) and its signature. Raises
    :class:`Refused` (with the request's id once it is known) and never anything else."""
    limit = MAX_CONFIG_PAYLOAD if command == "config.apply" else MAX_PAYLOAD
    if len(payload) > limit:
        raise Refused("too_large", f"{len(payload)} bytes; at most {limit}")
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise Refused("bad_json", f"not JSON: {err}") from None
    rid = raw.get("id") if isinstance(raw, dict) else None
    rid = rid if isinstance(rid, str) and re.match(r"^[A-Za-z0-9._:-]{1,128}$", rid) else None
    try:
        req = CommandRequest.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in err.errors()[:5]
        )
        raise Refused("bad_request", problems, rid) from None
    except RecursionError:
        raise Refused("bad_request", "nested too deep", rid) from None
    if not _NAME.match(command) or command not in DEFAULT_POLICY:
        raise Refused("unknown_command", f"no command {command[:40]!r}", req.id)
    rule = policy.get(command, DEFAULT_POLICY[command])
    if rule == "disabled":
        raise Refused("disabled", f"{command} is not enabled in this gateway's config", req.id)
    if now > req.expires_at:
        raise Refused("expired", f"expired {now - req.expires_at:.0f} s ago", req.id)
    if req.issued_at > now + clock_skew:
        raise Refused(
            "not_yet_valid",
            f"issued {req.issued_at - now:.0f} s in the future (clocks more than "
            f"{clock_skew:.0f} s apart?)",
            req.id,
        )
    if req.expires_at - req.issued_at > max_lifetime:
        raise Refused(
            "too_long_lived",
            f"valid for {req.expires_at - req.issued_at:.0f} s; at most {max_lifetime:.0f}",
            req.id,
        )
    key: str | None = None
    if req.sig is not None:
        if keys is None or req.sig.key not in keys:
            raise Refused("unknown_key", f"no key {req.sig.key!r} in the config", req.id)
        try:
            value = base64.b64decode(req.sig.ed25519, validate=True)
        except (binascii.Error, ValueError):
            raise Refused("bad_signature", "the signature is not base64", req.id) from None
        if len(value) != 64 or not keys.verify(
            req.sig.key, value, canonical(gateway, command, req)
        ):
            raise Refused("bad_signature", f"does not verify with key {req.sig.key}", req.id)
        key = req.sig.key
    elif rule == "signed":
        raise Refused("unsigned", f"{command} needs a signed request", req.id)
    return Request(command, req.id, req.issued_at, req.expires_at, dict(req.args), key)


def result_payload(
    gateway: str,
    command: str,
    request_id: str | None,
    status: Literal["accepted", "done", "failed"],
    *,
    received: float,
    finished: float | None = None,
    reason: str | None = None,
    detail: str | None = None,
    output: Any = None,
    replayed: bool = False,
) -> dict[str, Any]:
    """A result's JSON on ``cmd_result`` (docs/payload.md#commands)."""
    out: dict[str, Any] = {
        "v": 1,
        "gateway": gateway,
        "id": request_id,
        "command": command,
        "status": status,
        "received": round(received, 3),
        "finished": None if finished is None else round(finished, 3),
        "ms": None if finished is None else round((finished - received) * 1000, 1),
        "replayed": replayed,
    }
    if reason is not None:
        out["reason"] = reason
        out["detail"] = detail or ""
    if output is not None:
        out["output"] = output
    return out
