"""The command contract (tepi.gateway.commands): what is refused and why, Ed25519 signatures
over the canonical form, the config's policy checks; and fuzzed payloads give only clean
refusals."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from rig import validator

from tepi.core.errors import ConfigError
from tepi.gateway.commands import (
    REASONS,
    Keyring,
    Policy,
    Refused,
    Request,
    check,
    result_payload,
    sign,
)
from tepi.gateway.configload import parse_config

NOW = 1_796_300_000.0
SEED = bytes(range(32))
PUBLIC = (
    Ed25519PrivateKey.from_private_bytes(SEED)
    .public_key()
    .public_bytes(Encoding.Raw, PublicFormat.Raw)
)
KEYS = Keyring({"ioc-1": PUBLIC})


def request(**kw: Any) -> dict[str, Any]:
    return {"id": "req-1", "issued_at": NOW - 1, "expires_at": NOW + 60, "args": {}, **kw}


def run(
    command: str,
    req: dict[str, Any] | bytes,
    policy: dict[str, Policy] | None = None,
    gateway: str = "gw-1",
) -> Request:
    payload = req if isinstance(req, bytes) else json.dumps(req).encode()
    return check(
        command,
        payload,
        gateway=gateway,
        now=NOW,
        policy=policy or {},
        keys=KEYS,
        max_lifetime=3600,
        clock_skew=300,
    )


def refused(command: str, req: dict[str, Any] | bytes, **kw: Any) -> Refused:
    with pytest.raises(Refused) as info:
        run(command, req, **kw)
    assert info.value.reason in REASONS
    return info.value


def test_a_harmless_command_runs_unsigned() -> None:
    got = run("ping", request(args={"echo": "hi"}))
    assert (got.command, got.id, got.args, got.key) == ("ping", "req-1", {"echo": "hi"}, None)


@pytest.mark.parametrize(
    ("command", "req", "reason", "says"),
    [
        ("ping", b"x" * 70000, "too_large", "at most 65536"),
        ("ping", b"{not json", "bad_json", "not JSON"),
        ("ping", request(id="has space"), "bad_request", "id"),
        ("ping", request(extra=1), "bad_request", "extra"),
        ("ping", request(args={"a-b": 1}), "bad_request", "argument name"),
        ("ping", request(issued_at="soon"), "bad_request", "issued_at"),
        ("reboot", request(), "unknown_command", "no command 'reboot'"),
        ("write", request(), "disabled", "not enabled"),
        ("ping", request(expires_at=NOW - 5), "expired", "expired 5 s ago"),
        ("ping", request(issued_at=NOW + 600, expires_at=NOW + 700), "not_yet_valid", "future"),
        ("ping", request(expires_at=NOW + 7200), "too_long_lived", "at most 3600"),
    ],
)
def test_each_refusal_is_clear(
    command: str, req: dict[str, Any] | bytes, reason: str, says: str
) -> None:
    err = refused(command, req)
    assert err.reason == reason
    assert says in err.detail


def test_a_refusal_names_the_request_when_it_can() -> None:
    assert refused("write", request()).request_id == "req-1"
    assert refused("ping", request(expires_at=NOW - 5)).request_id == "req-1"
    assert refused("ping", b"{not json").request_id is None


def test_a_signed_request_verifies_and_any_change_breaks_it() -> None:
    policy: dict[str, Policy] = {"write": "signed"}
    signed = sign(SEED, "gw-1", "write", request(args={"device": "siren", "value": True}), "ioc-1")
    got = run("write", signed, policy)
    assert got.key == "ioc-1"
    # Any change to what was signed: the args, the id, the times, another gateway or command.
    for tampered in (
        {**signed, "args": {"device": "siren", "value": False}},
        {**signed, "id": "req-2"},
        {**signed, "expires_at": NOW + 61},
    ):
        assert refused("write", tampered, policy=policy).reason == "bad_signature"
    assert refused("write", signed, policy=policy, gateway="gw-2").reason == "bad_signature"
    other = sign(SEED, "gw-1", "ping", request(), "ioc-1")
    assert refused("poll_rate", other, policy={"poll_rate": "signed"}).reason == "bad_signature"
    # Unsigned where the policy says signed; an unknown key; a signature that is not base64.
    assert refused("write", request(), policy=policy).reason == "unsigned"
    stranger = {**signed, "sig": {"key": "ioc-9", "ed25519": signed["sig"]["ed25519"]}}
    assert refused("write", stranger, policy=policy).reason == "unknown_key"
    garbled = {**signed, "sig": {"key": "ioc-1", "ed25519": "!" * 88}}
    assert refused("write", garbled, policy=policy).reason == "bad_signature"
    # An unsigned command with a signature: it must verify too.
    forged = {**request(), "sig": signed["sig"]}
    assert refused("ping", forged).reason == "bad_signature"


def test_requests_and_results_follow_the_schema() -> None:
    signed = sign(SEED, "gw-1", "write", request(args={"device": "siren"}), "ioc-1")
    validator("command_request").validate(signed)
    validator("command_request").validate(request())
    results = validator("command_result")
    results.validate(result_payload("gw-1", "ping", "r", "done", received=NOW, finished=NOW))
    err = refused("write", request())
    results.validate(
        result_payload(
            "gw-1", "write", err.request_id, "failed", received=NOW, reason=err.reason,
            detail=err.detail,
        )
    )  # fmt: skip
    with pytest.raises(Exception, match="reason"):
        results.validate(result_payload("gw-1", "ping", None, "failed", received=NOW))


def test_result_payload() -> None:
    done = result_payload("gw-1", "ping", "req-1", "done", received=NOW, finished=NOW + 0.0123)
    assert done["ms"] == pytest.approx(12.3)
    assert "reason" not in done
    failed = result_payload(
        "gw-1", "write", "req-2", "failed", received=NOW, reason="disabled", detail="no"
    )
    assert (failed["reason"], failed["detail"], failed["finished"]) == ("disabled", "no", None)


def _config(commands: str) -> str:
    return f'gateway: {{id: gw}}\nuplink: {{url: "mqtt://127.0.0.1"}}\ncommands:\n{commands}'


KEY_B64 = base64.b64encode(PUBLIC).decode()


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ("  policy: {reboot: unsigned}", "no command 'reboot'"),
        ("  policy: {write: signed}", "no key to check with"),
        ("  policy: {write: unsigned}", "sign it, or set allow_unsigned_changes"),
        ("  keys: [{id: k, public_key: abc}]", "not base64"),
        ("  keys: [{id: k, public_key: 'AAAA'}]", "3 bytes; an Ed25519 public key is 32"),
        (
            f"  keys: [{{id: k, public_key: '{KEY_B64}'}}, {{id: k, public_key: '{KEY_B64}'}}]",
            "each key needs its own id",
        ),
        ("  policy: {ping: maybe}", "signed"),
    ],
)
def test_the_commands_section_refuses_unsafe_or_wrong_settings(section: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config(section), "t.yaml", check_files=False)
    assert says in str(info.value)


def test_a_signed_policy_with_its_key_and_an_explicit_unsigned_change_validate() -> None:
    cfg = parse_config(
        _config(
            f"  policy: {{write: signed, reload: unsigned}}\n"
            f"  allow_unsigned_changes: true\n"
            f"  keys: [{{id: ioc-1, public_key: '{KEY_B64}'}}]"
        ),
        "t.yaml",
        check_files=False,
    )
    assert cfg.commands.policy == {"write": "signed", "reload": "unsigned"}
    assert cfg.commands.keys[0].id == "ioc-1"


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    command=st.sampled_from(["ping", "write", "read", "x", "config.apply", ""]),
    body=st.one_of(
        st.binary(max_size=200),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"id": st.text(max_size=10), "issued_at": JSON, "expires_at": JSON},
            optional={"args": JSON, "sig": JSON},
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_fuzzed_payloads_give_only_clean_refusals(command: str, body: bytes) -> None:
    outcome: Request | Refused
    try:
        outcome = run(command, body, {"write": "signed"})
    except Refused as err:  # anything else fails the test
        outcome = err
    if isinstance(outcome, Refused):
        assert outcome.reason in REASONS
        assert outcome.detail
    else:
        assert outcome.command == command
