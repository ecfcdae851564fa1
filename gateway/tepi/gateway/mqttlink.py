"""The uplink's MQTT connection parts, below the session logic of :mod:`tepi.gateway.uplink`.

- ``_Client``: aiomqtt's client with TCP_NODELAY, the CONNACK's flags and properties kept,
  a keepalive timer that wakes when a check is due (not once a second), a link lost
  before CONNACK failing the connect at once, waits that a cancellation always ends, and
  a connect that survives its socket being reset under it;
- how a failed connect is worded (``_WHAT``) and classified (``_classify``, ``_rc``,
  ``_caused_by``; ``_Kind`` and ``_LinkDown`` carry the kind), and the session's
  ``_SwitchBack`` to an earlier broker of the failover list;
- ``_PahoErrors`` and ``_LateAck``: what paho and aiomqtt log, kept or filtered;
- the probes: ``_answers`` (does the broker's port accept TCP) and ``_connect_311`` (an MQTT
  3.1.1 CONNECT, to tell a broker that only speaks 3.1.1);
- the credentials: ``_tls_context`` (always verifying) and ``_password``, which raise
  :class:`UplinkSetupError` naming the file or variable they could not use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from tepi.gateway import logring
from tepi.gateway.config import Config, resolve_credential

__all__ = ["UplinkSetupError"]

T = TypeVar("T")

_WHAT = {
    "tls": "refused by TLS (certificates are always verified: check tls.ca_file, the "
    "broker's host name and the client certificate)",
    "refused": "refused the connection (check username, password and ACL)",
    "link": "unreachable or lost",
    "protocol": 'does not speak MQTT 5 (it accepts 3.1.1): set uplink.protocol: "3.1.1". tepi '
    "does not fall back by itself: MQTT 5's failure acknowledgements are what keep a publish "
    "the broker refused (an ACL) in the buffer, and 3.1.1 has none",
    "qos": "does not take QoS 1 (its maximum QoS is 0): tepi cannot know that a reading "
    "arrived, so it does not send; readings stay buffered",
}

# MQTT 5 CONNACK reason codes that say what the broker lacks (MQTT 5.0, 3.2.2.2).
_RC_UNSUPPORTED_PROTOCOL = 0x84
_RC_RETAIN_NOT_SUPPORTED = 0x9A
_RC_QOS_NOT_SUPPORTED = 0x9B


class _LinkDown(Exception):
    """The broker refused or could not be reached, or the link was lost: why, in words."""

    def __init__(self, kind: str, err: BaseException) -> None:
        super().__init__(f"{_WHAT[kind]}: {err}")
        self.kind = kind


class _SwitchBack(Exception):
    """An earlier broker of the failover list has been back for ``failover.hold``: end the
    session on the later one and connect to it (the unacknowledged batches go again there)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"broker {index + 1} of the list is back")
        self.index = index


class _LostBeforeConnack(aiomqtt.MqttCodeError):
    """The broker closed the connection before it answered the CONNECT."""

    def __str__(self) -> str:
        return f"{super().__str__()}: {self.args[0]}" if self.args else super().__str__()


class _Client(aiomqtt.Client):
    """aiomqtt's client, without its once-a-second timer.

    aiomqtt calls paho's ``loop_misc`` (keepalive: send PINGREQ, drop a link whose PINGRESP
    is late) every second, so an idle agent woke 86,400 times a day for nothing. Here it is
    called when the next keepalive check is due, computed from paho's own timestamps, so an
    idle connection wakes once per keepalive period (the PINGREQ it must send anyway). The
    dead-link detection time is unchanged: a PINGRESP missing for ``keepalive`` drops the link.
    """

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho leaves Nagle's algorithm on. A small publish written while an earlier
        # segment awaits the broker's delayed ACK then waits for it: up to 40 ms on Linux,
        # for a reading that could be at the broker in one.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super()._on_socket_open(client, userdata, sock)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho's connect runs in an executor thread while the loop already reads the socket.
        # A reset read there closes the socket (paho sets it to None) between paho's check
        # and this call, and aiomqtt's ``sock.fileno()`` raised AttributeError out of the
        # connect: the uplink died and the agent exited 3 (seen under load, a broker that
        # reset connections). Nothing to watch on a closed socket; the loss reaches the
        # connect as a link lost before CONNACK (``_on_disconnect``), which is retried.
        if sock is None:
            return
        # A publish on the loop's own thread (the uplink's, every message): write it now.
        # The socket nearly always takes it whole; only what it does not take (a full send
        # buffer) waits for the socket to be writable, aiomqtt's way. That way for every
        # message cost a call_soon_threadsafe (a write to the loop's self-pipe, and a loop
        # turn to read it), an add_writer and a remove_writer (two epoll_ctl), and the turn
        # in which the writer fires: about 3% of the agent's time at 500 polls a second.
        # The connect's packets come from aiomqtt's executor thread, and go its way.
        try:
            here = asyncio.get_running_loop() is self._loop
        except RuntimeError:  # not on a thread with a running loop: the executor's
            here = False
        if here and not self._writing:  # (paho asking again from this write: a writer)
            self._writing = True
            try:
                client.loop_write()  # paho's own call when no loop watches its socket
            except Exception as exc:  # noqa: BLE001 - as aiomqtt's writer: the link broke
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)
                return
            finally:
                self._writing = False
            if not client.want_write():
                return  # all written; paho has said it no longer wants the writer
        super()._on_socket_register_write(client, userdata, sock)

    _writing = False  # in a write of _on_socket_register_write's own

    # What the CONNACK said: session present, and (MQTT 5) the broker's properties.
    session_present = False
    connack_properties: Properties | None = None

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        if not self._connected.done():
            self.session_present = bool(getattr(flags, "session_present", False))
            self.connack_properties = properties
        super()._on_connect(client, userdata, flags, reason_code, properties)

    async def _misc_loop(self) -> None:
        paho = self._client
        while paho.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
            keepalive = paho._keepalive  # paho keeps these private; pinned in constraints
            if keepalive <= 0:
                await asyncio.sleep(3600)
                continue
            with paho._msgtime_mutex:
                last = min(paho._last_msg_out, paho._last_bytes_received)
            due = last + keepalive
            if paho._ping_t > 0:
                due = min(due, paho._ping_t + keepalive)
            # paho compares with >=; a little slack so the check finds the moment has come.
            await asyncio.sleep(max(due - time.monotonic(), 0.0) + 0.01)

    async def _wait_for(self, fut: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 (aiomqtt's signature)
        # aiomqtt waits with asyncio.wait_for, which on Python 3.11 returns the result of a
        # call (a PUBACK, an UNSUBACK) that completes as the task is cancelled: the
        # cancellation is lost, the task goes on, and a stop waits out its 8 s and exits 3
        # (seen under load: the update-parts lane's unsubscribe at a session's start). Not a
        # timeout scope either: on 3.11.2 a scope's expiry raises CancelledError in a task
        # that a failed TaskGroup left counted as cancelling (tepi.core.tasks). asyncio.wait
        # neither loses a cancellation nor cancels the task to time out.
        if timeout is None:
            timeout = self.timeout
        if timeout == math.inf:
            return await fut  # no timeout: as aiomqtt does
        waited = asyncio.ensure_future(fut)
        try:
            done, _ = await asyncio.wait((waited,), timeout=timeout)
        except BaseException:  # cancelled: so is the call, as with wait_for
            waited.cancel()
            raise
        if not done:
            waited.cancel()
            raise aiomqtt.MqttError("Operation timed out")
        return waited.result()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        # aiomqtt ignores a link lost before CONNACK, so the connect waits out its whole
        # timeout; here the connect fails at once and the backoff takes over.
        if not self._connected.done():
            self._connected.set_exception(
                _LostBeforeConnack(reason_code, "connection lost before the broker accepted it")
            )
            return
        if self._connected.cancelled():
            # A connect given up on (its timeout, the agent stopping) cancelled the future
            # aiomqtt reads here with ``exception()``, which then raises CancelledError in
            # paho's callback ("Exception in callback", seen in CI on Python 3.11.2). No one
            # awaits this session's end: nothing to tell.
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)
        # The session learns of a lost link from its message stream (_watch). A link lost as
        # the session ends (the agent stopping as the broker goes) left this future's
        # exception unread: "Future exception was never retrieved" at ERROR in a clean stop's
        # log. Reading it marks it seen; whoever awaits the future still gets it.
        fut = self._disconnected
        if fut.done() and not fut.cancelled():
            fut.exception()


class _PahoErrors(logging.Handler):
    """Keeps paho's last error line. aiomqtt reports a connection the broker drops before
    CONNACK (for example a TLS 1.3 alert: client certificate required) only as a timeout;
    paho's own log line says why."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


class _LateAck(logging.Filter):
    """Drops aiomqtt's error (with a traceback) for a SUBACK that comes after its subscribe
    was cancelled: a stop or a lost link during the session's start. Nothing is lost: the
    next session subscribes again."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unexpected message ID")


def _classify(err: BaseException) -> str:
    """tls, refused (the broker said no) or link (everything else), from the cause chain."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return "tls"
        if isinstance(seen, MqttConnectError):
            return "refused"
        seen = seen.__cause__ or seen.__context__
    # aiomqtt re-raises OSError (so SSLError) as MqttError(str(exc)) from None: read the text.
    text = str(err).lower()
    if "ssl" in text or "certificate" in text or "tls" in text:
        return "tls"
    return "link"


class _Kind(aiomqtt.MqttError):
    """A connect failure already classified (one of ``_WHAT``'s keys), with its cause."""

    def __init__(self, kind: str, err: BaseException) -> None:
        super().__init__(str(err))
        self.kind = kind


def _rc(err: BaseException) -> int | None:
    """The CONNACK reason code of a refused connect, or None."""
    if not isinstance(err, MqttConnectError):
        return None
    rc = err.rc
    return rc.value if isinstance(rc, ReasonCode) else rc


def _caused_by(err: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _answers(address: tuple[str, int]) -> bool:
    """Whether ``address`` accepts a TCP connection (closed at once, nothing sent)."""
    try:
        async with asyncio.timeout(2.0):
            _, writer = await asyncio.open_connection(*address)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _connect_311(client_id: str, username: str | None, password: str | None) -> bytes:
    """An MQTT 3.1.1 CONNECT packet: not a clean session, no will, 10 s keepalive."""

    def text(value: str) -> bytes:
        data = value.encode()
        return len(data).to_bytes(2, "big") + data

    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = text("MQTT") + bytes([4, flags]) + (10).to_bytes(2, "big") + text(client_id)
    if username is not None:
        body += text(username)
    if password is not None:
        body += text(password)
    size, length = len(body), bytearray()
    while True:  # the remaining length, 7 bits a byte
        size, byte = divmod(size, 128)
        length.append(byte | (0x80 if size else 0))
        if not size:
            break
    return b"\x10" + bytes(length) + body


class UplinkSetupError(Exception):
    """A credential or TLS file that is there but cannot be used (a garbage PEM, a key that
    is not the certificate's, a CA file that holds no certificate): which key, which file."""


def _tls_context(cfg: Config) -> ssl.SSLContext | None:
    """The verifying TLS context of the config; UplinkSetupError names a file it could not
    use. Everything is loaded here, at once, so a bad file is found before connecting."""
    up = cfg.uplink
    if not up.secure:
        return None
    tls = up.tls
    ca = tls.ca_file if tls else None
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (ssl.SSLError, OSError) as err:
        raise UplinkSetupError(
            f"uplink.tls.ca_file {ca}: not a usable CA certificate: {err}"
        ) from err
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # create_default_context verifies the chain and the host name; keep it that way.
    if ctx.verify_mode != ssl.CERT_REQUIRED or not ctx.check_hostname:
        raise RuntimeError("TLS context does not verify the broker: refusing to connect")
    if tls is not None and tls.cert_file is not None and tls.key_file is not None:
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (ssl.SSLError, OSError) as err:
            raise UplinkSetupError(
                f"uplink.tls.cert_file {tls.cert_file} with key_file {tls.key_file}: not a "
                f"usable certificate and its key: {err}"
            ) from err
    return ctx


def _password(cfg: Config) -> SecretStr | None:
    up = cfg.uplink
    try:
        password = up.read_password()
    except KeyError as err:
        raise UplinkSetupError(f"uplink.password_env: {up.password_env} is not set") from err
    except (OSError, UnicodeDecodeError) as err:
        where = resolve_credential(up.password_file) if up.password_file else None
        raise UplinkSetupError(f"uplink.password_file {where}: cannot read it: {err}") from err
    if password is not None:
        logring.secret(password.get_secret_value())  # never shown by the IOC's logs.tail
    return password
