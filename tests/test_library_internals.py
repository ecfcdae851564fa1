"""The private parts of paho-mqtt, aiomqtt and pymodbus that tepi reads, wraps or overrides,
each checked against the installed library, so an upgrade that changes one fails here with
a message that names it, not as a hang or a wrong reading in the field. pyproject.toml holds
these libraries to the minor version tested (the pins in constraints.txt).

Written against paho-mqtt 2.2.0, aiomqtt 2.5.1 and pymodbus 3.16.1."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import sys
import threading
from importlib.metadata import version
from pathlib import Path

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pymodbus.framer.rtu import FramerRTU

from tepi.drivers.modbus import wire
from tepi.gateway import mqttlink

REPO = Path(__file__).resolve().parent.parent
WRITTEN_FOR = {"paho-mqtt": "2.2", "aiomqtt": "2.5", "pymodbus": "3.16"}


def _why(lib: str, what: str) -> str:
    return (
        f"{lib} {version(lib)} changed {what}, which tepi relies on (written against "
        f"{lib} {WRITTEN_FOR[lib]}.x): see tests/test_library_internals.py and the code it names"
    )


@pytest.mark.parametrize("lib", sorted(WRITTEN_FOR))
def test_pyproject_holds_each_to_the_minor_version_tested(lib: str) -> None:
    """A plain ``pip install tepi`` resolves within the tested minor version, the one
    constraints.txt pins."""
    deps = (REPO / "pyproject.toml").read_text()
    found = re.search(rf'"{lib}>=([\d.]+),<([\d.]+)"', deps)
    assert found, f"{lib} has no range in pyproject.toml"
    low, high = found.groups()
    pins = (REPO / "constraints.txt").read_text()
    pin = re.search(rf"^{lib}==([\d.]+)$", pins, re.M | re.I)
    assert pin, f"{lib} is not pinned in constraints.txt"
    minor = ".".join(pin.group(1).split(".")[:2])
    assert minor == WRITTEN_FOR[lib], f"constraints.txt pins {lib} {pin.group(1)}"
    assert tuple(map(int, low.split("."))) >= tuple(map(int, minor.split("."))), low
    major, mn = map(int, minor.split("."))
    assert high == f"{major}.{mn + 1}", f"{lib}: pyproject allows up to <{high}, tested {minor}"
    assert version(lib).startswith(minor + "."), f"installed {lib} {version(lib)}"


def test_paho_keepalive_timestamps_read_by_the_misc_loop() -> None:
    """mqttlink._Client._misc_loop reads paho's keepalive, its message times (under their
    mutex) and its ping time, to wake only when the keepalive check is due."""
    paho = mqtt.Client(CallbackAPIVersion.VERSION2)
    for name, kind in (
        ("_keepalive", int),
        ("_last_msg_out", float),
        ("_last_bytes_received", float),
        ("_ping_t", (int, float)),
    ):
        assert hasattr(paho, name), _why("paho-mqtt", f"Client.{name} (gone)")
        assert isinstance(getattr(paho, name), kind), _why("paho-mqtt", f"Client.{name}'s type")
    assert isinstance(paho._msgtime_mutex, type(threading.Lock())), _why(
        "paho-mqtt", "Client._msgtime_mutex"
    )
    assert "_last_msg_out" in inspect.getsource(mqtt.Client._check_keepalive), _why(
        "paho-mqtt", "Client._check_keepalive (no longer reads _last_msg_out)"
    )
    assert callable(paho.loop_misc)


async def test_aiomqtt_misc_loop_and_disconnect_overridden_by_the_uplink() -> None:
    """mqttlink._Client overrides aiomqtt.Client._misc_loop (started on connect) and
    _on_disconnect (paho's callback, five arguments), reads ``_connected`` and wraps the paho
    client's on_publish through ``_client``."""
    assert hasattr(aiomqtt.Client, "_misc_loop"), _why("aiomqtt", "Client._misc_loop (gone)")
    assert "create_task(self._misc_loop())" in inspect.getsource(aiomqtt.client), _why(
        "aiomqtt", "how it starts Client._misc_loop (on its paho socket's open)"
    )
    ours = list(inspect.signature(mqttlink._Client._on_disconnect).parameters)
    theirs = list(inspect.signature(aiomqtt.Client._on_disconnect).parameters)
    assert theirs == ours, _why("aiomqtt", f"Client._on_disconnect's signature: {theirs}")
    client = aiomqtt.Client("127.0.0.1", 1)
    assert isinstance(client._client, mqtt.Client), _why("aiomqtt", "Client._client")
    assert hasattr(client._connected, "done"), _why("aiomqtt", "Client._connected (a future)")
    assert client._client.on_publish is not None, _why(
        "aiomqtt", "its paho on_publish callback (the PUBACK hook uplink wraps)"
    )
    assert len(inspect.signature(client._client.on_publish).parameters) == 5, _why(
        "aiomqtt", "its on_publish callback's signature"
    )


async def test_a_cancellation_as_an_mqtt_call_completes_is_not_lost() -> None:
    """aiomqtt's calls (publish, subscribe, unsubscribe, connect) wait through
    ``Client._wait_for``, with asyncio.wait_for, which on Python 3.11 returns the result of
    an acknowledgement that completes as the task is cancelled and loses the cancellation:
    a stop then waits its 8 s and exits 3. mqttlink._Client's wait raises it."""
    ours = list(inspect.signature(mqttlink._Client._wait_for).parameters)
    theirs = list(inspect.signature(aiomqtt.Client._wait_for).parameters)
    assert theirs == ours, _why("aiomqtt", f"Client._wait_for's signature: {theirs}")
    for name in ("publish", "subscribe", "unsubscribe", "__aenter__"):
        source = inspect.getsource(getattr(aiomqtt.Client, name))
        assert "self._wait_for(" in source, _why("aiomqtt", f"how Client.{name} waits")

    async def cancelled_as_it_completes(client: aiomqtt.Client) -> bool:
        ack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        waiting = asyncio.create_task(client._wait_for(ack, timeout=5.0))
        await asyncio.sleep(0)  # it waits for the acknowledgement
        ack.set_result(1)  # the acknowledgement comes, and in the same turn the stop
        waiting.cancel()
        try:
            await waiting
        except asyncio.CancelledError:
            return True
        return False

    assert await cancelled_as_it_completes(mqttlink._Client("127.0.0.1", 1))
    # What the override is for: aiomqtt's own wait loses it on this Python (3.11).
    if sys.version_info < (3, 12):
        assert not await cancelled_as_it_completes(aiomqtt.Client("127.0.0.1", 1))

    # A timeout is still aiomqtt's error, and the wait is bounded, also in a task that a
    # failed TaskGroup left counted as cancelling (Python 3.11: tepi.core.tasks), where a
    # timeout scope's expiry would raise CancelledError and end the uplink's task.
    async def times_out(counted: bool) -> None:
        task = asyncio.current_task()
        assert task is not None
        if counted:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1)  # caught, not taken back, as a failed group leaves it
            assert task.cancelling() == 1
        never: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        with pytest.raises(aiomqtt.MqttError, match="timed out"):
            await mqttlink._Client("127.0.0.1", 1)._wait_for(never, timeout=0.01)
        assert never.cancelled()

    await asyncio.create_task(times_out(False))
    await asyncio.create_task(times_out(True))


def test_paho_may_hand_the_write_hook_a_socket_closed_meanwhile() -> None:
    """paho's connect runs in an executor thread; it checks its socket, then calls the
    socket-register-write hook with it, and the loop's thread may close it (a reset) in
    between: the hook gets None. aiomqtt's hook then raised AttributeError out of the
    connect, and the agent exited 3. mqttlink._Client's hook takes None as nothing to
    watch."""
    source = inspect.getsource(mqtt.Client._call_socket_register_write)
    why = _why("paho-mqtt", "Client._call_socket_register_write (passes self._sock, read again)")
    assert "self._sock" in source, why
    assert "on_socket_register_write(" in source, why
    ours = list(inspect.signature(mqttlink._Client._on_socket_register_write).parameters)
    theirs = list(inspect.signature(aiomqtt.Client._on_socket_register_write).parameters)
    assert theirs == ours, _why("aiomqtt", f"Client._on_socket_register_write: {theirs}")

    async def hook(cls: type[aiomqtt.Client]) -> None:
        client = cls("127.0.0.1", 1)
        client._on_socket_register_write(client._client, None, None)

    asyncio.run(hook(mqttlink._Client))  # nothing to watch, nothing raised
    # The hook writes a publish at once on the loop's thread (paho's loop_write) and leaves
    # the rest to aiomqtt's writer: paho marks the write as registered before it calls the
    # hook (so the write's own request for a writer returns at once), and aiomqtt keeps its
    # loop and the session's end in ``_loop`` and ``_disconnected``.
    assert source.index("self._registered_write = True") < source.index(
        "on_socket_register_write("
    ), why

    async def parts() -> None:
        client = mqttlink._Client("127.0.0.1", 1)
        assert client._loop is asyncio.get_running_loop(), _why("aiomqtt", "Client._loop")
        assert isinstance(client._disconnected, asyncio.Future), _why("aiomqtt", "_disconnected")

    asyncio.run(parts())
    with pytest.raises(AttributeError):  # aiomqtt's own: what the agent died of
        asyncio.run(hook(aiomqtt.Client))


async def test_pymodbus_parts_the_link_uses() -> None:
    """tepi's transaction layer (tepi.drivers.modbus.tcp and wire) takes from pymodbus only
    the request PDUs its request classes encode, and FramerRTU's CRC: no client, framer or
    transport (the serial port is tepi's own, serialline.py)."""
    assert wire.read_pdu(3, 0, 2) == bytes.fromhex("03 0000 0002"), _why(
        "pymodbus", "ReadHoldingRegistersRequest.encode"
    )
    assert FramerRTU.compute_CRC(b"\x01\x03\x02\x00\x01") == 0x7984, _why(
        "pymodbus", "FramerRTU.compute_CRC"
    )
    assert FramerRTU.check_CRC(b"\x01\x03\x02\x00\x01", 0x7984), _why(
        "pymodbus", "FramerRTU.check_CRC"
    )
