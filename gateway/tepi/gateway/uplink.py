"""The uplink: committed readings -> MQTT batches -> broker; PUBACK -> delete.

One connection at a time, each a *session* that runs its tasks in a TaskGroup: a watcher
that raises when the link drops, the senders (alarms first, then telemetry: live and
backlog lanes; images only when telemetry is idle), and the health publisher. When any of them
fails, the TaskGroup cancels the rest and every unacknowledged batch is sent again on the
next connection (duplicates are possible there and carry the same ``seq``; loss is not).

Sending keeps up to ``max_inflight`` batches awaiting their PUBACK, so draining a backlog is
not one round trip per batch. Latency: with nothing in flight a reading goes out as soon as
the other polls of its tick are over (at most ``round_wait``: ``pacing.Rounds``); while
publishes are waiting for acks, readings wait (up to ``max_wait``) to fill a batch.

Reconnects back off by the ``uplink reconnect`` policy (tepi.core.retry, caps from
``uplink.reconnect``): full jitter (a random delay between 0 and a doubling cap), so the
gateways of a city do not all come back at the same moment after an IOC outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import aiomqtt
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tepi.buffer import Batch, Buffer
from tepi.core import __version__
from tepi.core.clock import clock_synced
from tepi.core.retry import UPLINK_RECONNECT, Outage
from tepi.core.tasks import TaskGroup
from tepi.gateway.compact import encode_compact
from tepi.gateway.config import Config
from tepi.gateway.images import ImageHub
from tepi.gateway.mqttlink import (
    _RC_QOS_NOT_SUPPORTED,
    _RC_RETAIN_NOT_SUPPORTED,
    _RC_UNSUPPORTED_PROTOCOL,
    UplinkSetupError,
    _answers,
    _caused_by,
    _classify,
    _Client,
    _connect_311,
    _Kind,
    _LateAck,
    _LinkDown,
    _LostBeforeConnack,
    _PahoErrors,
    _password,
    _rc,
    _SwitchBack,
    _tls_context,
)
from tepi.gateway.pacing import Rounds
from tepi.gateway.payload import (
    alarm_payload,
    encode_telemetry,
    health_payload,
    image_meta_payload,
    status_payload,
)
from tepi.gateway.remote import Reply

if TYPE_CHECKING:
    from tepi.buffer.images import ImageMeta
    from tepi.gateway.alarms import AlarmHub
    from tepi.gateway.remote import CommandHub
    from tepi.gateway.updateparts import PartSink

__all__ = ["Uplink", "UplinkSetupError", "UplinkStats"]

log = logging.getLogger(__name__)

ALARM_BATCH = 100  # alarm messages in flight at once (each its own PUBACK)


@dataclass
class UplinkStats:
    """Counters for health and the CLI."""

    connected: bool = False
    attempts: int = 0
    connects: int = 0
    messages: int = 0
    readings_acked: int = 0
    peak_inflight: int = 0
    last_ack_ts: float | None = None
    last_error: str | None = None
    errors: dict[str, int] = field(default_factory=dict)
    probes: int = 0  # bare TCP connections tried while the broker was unreachable
    probes_answered: int = 0  # ... that found it back, and cut the backoff short
    broker: str | None = None  # the url of the broker connected to (None while not connected)


class Uplink:
    """Publishes the buffer's readings to the IOC broker; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        buffer: Buffer,
        boot_id: str,
        health: Callable[[], dict[str, Any]],
        images: ImageHub | None = None,
        *,
        alarms: AlarmHub | None = None,
        commands: CommandHub | None = None,
        rounds: Rounds | None = None,
    ) -> None:
        self.cfg = cfg
        self.rounds = rounds
        self.buffer = buffer
        self.images = images
        self.alarms = alarms
        self.commands = commands
        buffer.linked = False  # no acks until a session is up: the buffer commits at once
        self.boot_id = boot_id
        self._health = health
        up = cfg.uplink
        base = f"{up.topic_prefix}/{cfg.gateway.id}"
        self.topic_telemetry = f"{base}/telemetry"
        self.topic_status = f"{base}/status"
        self.topic_health = f"{base}/health"
        self.topic_alarm = f"{base}/alarm"
        self.topic_cmd = f"{base}/cmd/"  # + the command's name: requests from the IOC
        self.topic_cmd_result = f"{base}/cmd_result"
        self.topic_image = f"{base}/image"  # /{camera}: the JPEG bytes
        self.topic_image_meta = f"{base}/image_meta"  # /{camera}: its metadata, JSON
        self.topic_image_part = f"{base}/image_part"  # /{camera}/{seq}/{offset}: a part
        # An update bundle's parts (tepi.gateway.updateparts), set by the agent with commands.
        self.update_parts: PartSink | None = None
        self.stats = UplinkStats()
        self._inflight = {"live": 0, "backlog": 0}  # publishes awaiting their PUBACK
        # Where the live lane is: every reading up to here has been handed to the broker.
        # The image lane sends only while nothing newer waits (telemetry first).
        self._live_cursor = 0
        self._backlog_busy = False
        self._link_bps: float | None = None  # the link's speed, as image messages found it
        self._kick = asyncio.Event()
        self._last_kind = "link"  # how the last connect failed (_WHAT's keys)
        self._probed = False  # the attempt under way was started early by a probe
        self._probe_misses = 0  # attempts a probe started early that failed, this outage
        # Liveness of a session: publishes awaiting a PUBACK (telemetry and health), and when
        # the last acknowledgement (or the first publish after none waited) came.
        self._awaiting = 0
        self._progress_at = 0.0
        self._busy = asyncio.Event()
        self._refused = asyncio.Event()  # the broker refused a publish in this session
        self._changed = asyncio.Condition()
        self._refusal_logged = False
        # Both raise UplinkSetupError: a reload builds the new uplink before it stops the old.
        self._password = _password(cfg)
        self._tls = _tls_context(cfg)
        self._paho_log = logging.getLogger(f"tepi.mqtt.{cfg.gateway.id}")
        if not any(isinstance(f, _LateAck) for f in self._paho_log.filters):
            self._paho_log.addFilter(_LateAck())
        self._paho_errors = _PahoErrors()
        # Called on every connect and link failure (the agent's STATUS= line follows it).
        self.on_link: Callable[[], None] | None = None
        # The failover list (one broker without one): which is in use, and what each lacks.
        self._brokers = up.brokers
        self._current = 0  # the list's index of the broker connected to, or last tried
        self._retain = True  # False once an MQTT 5 broker said it keeps no retained messages
        self._max_bytes = up.batch.max_bytes  # lowered to an MQTT 5 broker's maximum packet
        self._sessions: set[int] = set()  # brokers that took a persistent session from us
        self._told: set[tuple[int, str]] = set()  # capability notes logged, once a broker
        self._v311_only: set[int] = set()  # brokers that closed MQTT 5 but took 3.1.1
        # The link's state, logged as it changes: the first failure, then the reconnect.
        names = ", ".join(f"{h}:{p}" for h, p in self._brokers)
        self._outage = Outage(
            log,
            f"broker {names}" if len(self._brokers) == 1 else f"brokers {names}",
            level=logging.ERROR,
            then="readings stay buffered",
        )

    # ---- connection management --------------------------------------------------------

    def _client(self, index: int) -> _Client:
        up = self.cfg.uplink
        host, port = self._brokers[index]
        v5 = up.protocol == "5"
        will = aiomqtt.Will(
            self.topic_status,
            status_payload(self.cfg.gateway.id, "offline", None, "connection lost", __version__),
            qos=1,
            retain=self._retain,
        )
        # A session the broker keeps while the gateway is offline: commands sent meanwhile
        # wait for it (the command log answers a redelivered one without running it again).
        persistent = up.session_expiry > 0
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = int(up.session_expiry)
        client = _Client(
            host,
            port,
            username=up.username,
            password=self._password.get_secret_value() if self._password else None,
            identifier=up.client_id or f"tepi-{self.cfg.gateway.id}",
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=will,
            clean_session=None if v5 else not persistent,
            # (MQTT 5 only; paho refuses it for 3.1.1. A new client object each connect.)
            clean_start=not persistent if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
            keepalive=int(up.keepalive),
            # for connect and disconnect; each publish passes its own publish_timeout
            timeout=min(up.publish_timeout, 10.0),
            tls_context=self._tls,
            max_inflight_messages=up.max_inflight + 4,
            logger=self._paho_log,
        )
        self._guard_refusals(client)
        return client

    def _guard_refusals(self, client: aiomqtt.Client) -> None:
        """Treat an MQTT 5 PUBACK with a failure reason code as *no* acknowledgement.

        aiomqtt confirms a publish on any PUBACK, even one saying "not authorized": the
        readings would be deleted though the broker dropped them. Here such a PUBACK does not
        confirm the publish; it ends the session, and the batch is sent again on the next
        connection (with the reconnect backoff) until the broker takes it.
        """
        # aiomqtt has no hook for PUBACK reason codes: wrap its paho callback.
        paho = client._client
        confirm = cast("Callable[..., None] | None", paho.on_publish)

        def on_publish(c: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
            if getattr(rc, "is_failure", False):
                self.stats.errors["publish_refused"] = (
                    self.stats.errors.get("publish_refused", 0) + 1
                )
                if not self._refusal_logged:
                    self._refusal_logged = True
                    log.error(
                        "broker refused a publish (%s): the readings stay buffered and "
                        "are sent again; check the gateway's ACL for %s/#",
                        rc,
                        self.topic_telemetry.rsplit("/", 1)[0],
                    )
                self._refused.set()  # end the session: send again after a reconnect
                return
            if confirm is not None:
                confirm(c, userdata, mid, rc, props)

        paho.on_publish = on_publish

    async def run(self) -> None:
        """Connect, run sessions, reconnect with backoff: forever (cancel to stop)."""
        self._paho_log.addHandler(self._paho_errors)
        try:
            await self._run()
        finally:
            self._paho_log.removeHandler(self._paho_errors)

    async def _run(self) -> None:
        # Not one tenacity retry around everything: a session that connected and ran is not a
        # failed attempt (its loss starts a new outage, with the caps from the first again),
        # so sessions loop here, and tenacity retries the operation that fails: the connect.
        up = self.cfg.uplink
        policy = UPLINK_RECONNECT.with_caps(up.reconnect.min_delay, up.reconnect.max_delay)
        while True:
            back: int | None = None
            try:
                async with contextlib.AsyncExitStack() as stack:
                    client = await policy.call(
                        functools.partial(self._connect, stack),
                        (_LinkDown,),
                        self._outage,
                        sleep=self._backoff,
                    )
                    await self._session(client)
            except* _SwitchBack as group:
                back = cast("_SwitchBack", group.exceptions[0]).index
            except* (aiomqtt.MqttError, OSError) as group:
                self._outage.failed(await self._down(group.exceptions[0]))
            if back is not None:
                await self._set(connected=False)
                log.info(
                    "broker %s answered for %.0f s (uplink.failover.hold): moving back to it",
                    self._name(back),
                    up.failover.hold,
                )
                continue  # at once: the earlier broker is known to be there
            # A link every gateway of a city lost at once (a broker restart) must not bring
            # them all back at once: the first reconnect waits too.
            await self._backoff(self._first_wait(policy.cap(1)))

    def _first_wait(self, first_cap: float) -> float:
        """The wait before the first reconnect after a session was lost or a move failed.

        A broker restart ends every gateway's session at the same instant, and the broker is
        often back before the first attempt. With probes on, that attempt waits a random part
        of ``spread`` (or of the backoff's first cap, if longer), so a fleet comes back over
        those seconds, as it does when a probe finds the broker back after an outage: the
        first cap alone (1 s) put a city's reconnects in one second (bench/fleet.py). With
        probes off, or an alarm waiting to be sent, or a broker that refused (TLS,
        credentials): the backoff's first wait, as before."""
        rc = self.cfg.uplink.reconnect
        if rc.probe_interval <= 0 or self._last_kind != "link" or self._alarm_waiting():
            return random.uniform(0.0, first_cap)
        return random.uniform(0.0, max(rc.spread, first_cap))

    async def _backoff(self, seconds: float) -> None:
        """The wait between two connect attempts, cut short when the broker is back.

        The backoff grows to ``max_delay`` (120 s) over a long outage, so the broker's return
        would be noticed up to minutes late. While the last attempt found the broker
        unreachable, a bare TCP connection to it is tried every ``probe_interval`` (jittered):
        it costs a refused SYN while the broker is down, and one accept when it is back. Then
        the connect goes after a random part of ``spread``, so a fleet comes back over a few
        seconds rather than at once. A broker that answers but refuses (TLS, credentials)
        gets the plain backoff: probing it would only hasten the next refusal. When an attempt
        a probe started fails all the same (a broker still starting, or overloaded: it
        accepts and does not answer), probing waits ``spread`` times 2, 4, 8, ... first, so such
        a broker gets fewer early attempts each time, never a loop of them.

        An alarm waiting to be sent makes it urgent: probes go twice as often and the connect
        follows a probe at once, without ``spread`` (the probes' own jitter still spreads a
        fleet), so the alarm reaches the IOC within about a second of the broker's return."""
        rc = self.cfg.uplink.reconnect
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        if self._probed:
            self._probed = False
            self._probe_misses += 1
        if rc.probe_interval <= 0 or self._last_kind != "link":
            await asyncio.sleep(seconds)
            return
        if self._probe_misses:
            await asyncio.sleep(min(seconds, rc.spread * 2**self._probe_misses))
        while (left := end - loop.time()) > 0:
            urgent = self._alarm_waiting()
            period = rc.probe_interval * (0.5 if urgent else 1.0)
            await asyncio.sleep(min(left, period * random.uniform(0.5, 1.5)))
            if loop.time() >= end:
                return
            if (back := await self._probe()) is not None:
                self.stats.probes_answered += 1
                self._probed = True
                log.info("broker %s:%d reachable again: reconnecting", *back)
                if not self._alarm_waiting():
                    await asyncio.sleep(min(end - loop.time(), random.uniform(0.0, rc.spread)))
                return

    def _alarm_waiting(self) -> bool:
        """Whether an alarm message waits to be sent (counters only: no SQL, no lock)."""
        hub = self.alarms
        return hub is not None and (hub.store.pending_count_quick() > 0 or hub.busy())

    async def _probe(self, upto: int | None = None) -> tuple[str, int] | None:
        """The first broker (of the first ``upto``, default all) whose port accepts a TCP
        connection (closed at once, nothing sent), or None."""
        for address in self._brokers[:upto]:
            self.stats.probes += 1
            if await _answers(address):
                return address
        return None

    async def _connect(self, stack: contextlib.AsyncExitStack) -> aiomqtt.Client:
        """One connect attempt: each broker of the list in turn, the first that takes the
        connection wins. When none does, the first one's failure is raised as ``_LinkDown``,
        with every broker's reason."""
        failures: list[tuple[int, _LinkDown]] = []
        for index in range(len(self._brokers)):
            try:
                client = await self._connect_one(stack, index)
            except _LinkDown as down:
                failures.append((index, down))
                continue
            self._connected_to(index, failures)
            await self._set(connected=True)
            return client
        kinds = [down.kind for _, down in failures]
        # Probing pays while some broker was unreachable; not when every one refused.
        self._last_kind = "link" if "link" in kinds else kinds[0]
        if len(failures) == 1:
            raise failures[0][1]
        why = "; ".join(f"{self._name(i)} {down}" for i, down in failures)
        raise _LinkDown(kinds[0], aiomqtt.MqttError(f"every broker failed: {why}"))

    async def _connect_one(self, stack: contextlib.AsyncExitStack, index: int) -> aiomqtt.Client:
        """Connect to broker ``index``; what it lacks is said (and worked around) here."""
        for _ in range(2):  # the second only without retain, when the broker has none
            client = self._client(index)
            try:
                await stack.enter_async_context(client)
            except (aiomqtt.MqttError, OSError) as err:
                if _rc(err) == _RC_RETAIN_NOT_SUPPORTED and self._retain:
                    self._retain = False
                    self._tell(
                        index,
                        "retain",
                        "has no retained messages: status and health go without retain (a "
                        "subscriber learns the state from the next health message), and the "
                        "last will too",
                    )
                    continue
                raise await self._down(await self._why(err, index)) from err
            self._capabilities(client, index)
            return client
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _connected_to(self, index: int, failures: list[tuple[int, _LinkDown]]) -> None:
        self._paho_errors.last = None
        before = self._current
        self._current = index
        self.stats.broker = self.cfg.uplink.urls[index]
        if failures:
            log.warning(
                "connected to broker %s, a later one of the list (%s)",
                self._name(index),
                "; ".join(f"{self._name(i)} {down}" for i, down in failures),
            )
        elif before != index:
            log.info(
                "connected to broker %s again (back from %s)", self._name(index), self._name(before)
            )
        elif not self._outage.down:
            log.info("connected to broker %s", self._name(index))
        self._probed = False
        self._probe_misses = 0

    def _name(self, index: int) -> str:
        return "%s:%d" % self._brokers[index]  # noqa: UP031 - host:port, as logged elsewhere

    async def _why(self, err: BaseException, index: int) -> BaseException:
        """An MQTT 5 connect refused (or a link closed before any CONNACK: RabbitMQ before
        3.13 cannot parse the CONNECT) by a broker that takes 3.1.1 says so in words."""
        if self.cfg.uplink.protocol != "5":
            return err
        rc = _rc(err)
        if rc == _RC_QOS_NOT_SUPPORTED:
            return _Kind("qos", err)
        if rc == _RC_UNSUPPORTED_PROTOCOL:
            return _Kind("protocol", err)
        # Once it took 3.1.1 the answer stands; a broker that was only starting or busy is
        # asked again at the next failure (one connection, paced by the backoff).
        if (
            rc is None
            and _caused_by(err, _LostBeforeConnack)
            and (index in self._v311_only or await self._takes_311(index))
        ):
            self._v311_only.add(index)
            return _Kind("protocol", err)
        return err

    async def _takes_311(self, index: int) -> bool:
        """Whether broker ``index`` accepts an MQTT 3.1.1 connect (no will, disconnected at
        once): the diagnosis of an MQTT 5 connect it closed unanswered. Not a clean session:
        a session the gateway left there (commands queued for it) stays, and what the broker
        may deliver meanwhile goes unacknowledged, so it is delivered again later."""
        up = self.cfg.uplink
        password = self._password.get_secret_value() if self._password else None
        packet = _connect_311(up.client_id or f"tepi-{self.cfg.gateway.id}", up.username, password)
        host, port = self._brokers[index]
        try:
            async with asyncio.timeout(5.0):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=self._tls, server_hostname=host if self._tls else None
                )
                try:
                    writer.write(packet)
                    connack = await reader.readexactly(4)
                    writer.write(b"\xe0\x00")  # DISCONNECT
                    await writer.drain()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return False
        return connack[0] == 0x20 and connack[3] == 0

    def _capabilities(self, client: _Client, index: int) -> None:
        """Say what the broker lacks, from its CONNACK (MQTT 5 properties; the session
        flag), one line each, the first time this process sees it, with what tepi does."""
        up = self.cfg.uplink
        persistent = up.session_expiry > 0
        if persistent:
            if index in self._sessions and not client.session_present:
                log.warning(
                    "broker %s did not keep the gateway's session (restarted without "
                    "persistence?): commands sent to the gateway while it was away are lost; "
                    "subscribed again",
                    self._name(index),
                )
            self._sessions.add(index)
        props = client.connack_properties
        if up.protocol != "5" or props is None:
            return
        if getattr(props, "RetainAvailable", 1) == 0 and self._retain:
            self._retain = False  # a retained publish would end the session (0x9A)
            self._tell(
                index,
                "retain",
                "has no retained messages: status and health go without retain from now on "
                "(a subscriber learns the state from the next health message)",
            )
        expiry = getattr(props, "SessionExpiryInterval", None)
        if persistent and expiry is not None and expiry < up.session_expiry:
            self._tell(
                index,
                "expiry",
                f"keeps the gateway's session {expiry} s, not uplink.session_expiry "
                f"({up.session_expiry:.0f} s): commands sent while the gateway is away longer "
                "are lost",
            )
        receive = getattr(props, "ReceiveMaximum", None)
        if receive is not None and receive < up.max_inflight:
            self._tell(
                index,
                "receive",
                f"takes {receive} unacknowledged messages at once, not uplink.max_inflight "
                f"({up.max_inflight}): the rest wait their turn",
            )
        largest = getattr(props, "MaximumPacketSize", None)
        if largest is not None and largest - 1024 < up.batch.max_bytes:
            self._max_bytes = max(1024, largest - 1024)  # room for the topic and headers
            self._tell(
                index,
                "size",
                f"takes packets of at most {largest} bytes: telemetry batches are cut to "
                f"{self._max_bytes} bytes, not uplink.batch.max_bytes ({up.batch.max_bytes})",
            )

    def _tell(self, index: int, what: str, text: str) -> None:
        if (index, what) not in self._told:
            self._told.add((index, what))
            log.warning("broker %s %s", self._name(index), text)

    async def _down(self, err: BaseException) -> _LinkDown:
        """Count a failed connect or a lost session, and say why (paho's note added)."""
        why = self._paho_errors.last
        self._paho_errors.last = None
        if why is not None and why not in str(err):
            err = aiomqtt.MqttError(f"{err} ({why})")
        kind = err.kind if isinstance(err, _Kind) else _classify(err)
        self._last_kind = kind
        await self._set(connected=False, error=(kind, err))
        return _LinkDown(kind, err)

    async def _set(
        self, *, connected: bool, error: tuple[str, BaseException] | None = None
    ) -> None:
        st = self.stats
        async with self._changed:
            if connected:
                st.connects += 1
            else:
                st.broker = None
            st.connected = connected
            self.buffer.linked = connected
            st.attempts += 1
            if error is not None:
                st.errors[error[0]] = st.errors.get(error[0], 0) + 1
                st.last_error = f"{error[0]}: {error[1]}"
            self._changed.notify_all()
        if self.on_link is not None:
            self.on_link()

    async def wait_for(self, pred: Callable[[UplinkStats], bool]) -> None:
        """Wait until ``pred(stats)`` holds (checked on every connect, failure and ack)."""
        async with self._changed:
            await self._changed.wait_for(lambda: pred(self.stats))

    async def _session(self, client: aiomqtt.Client) -> None:
        self._refused.clear()
        try:
            # The session's group gives the uplink's task back as it found it (Python 3.11:
            # tepi.core.tasks), so a timeout scope there later (the 3.1.1 probe's, the
            # shutdown's) still times out rather than ending the task.
            async with TaskGroup() as tg:
                # Watching from the start: a link lost while the status is on its way ends
                # the session at once, not after a timeout.
                tg.create_task(self._watch(client), name="tepi.uplink.watch")
                tg.create_task(self._stall_watch(), name="tepi.uplink.stall")
                tg.create_task(self._start_lanes(client, tg), name="tepi.uplink.start")
                if self._current > 0:
                    tg.create_task(self._return_watch(client), name="tepi.uplink.failback")
        except asyncio.CancelledError:
            # Shutting down: say so while the link is up (a clean disconnect sends no will).
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await client.publish(
                        self.topic_status,
                        status_payload(
                            self.cfg.gateway.id, "offline", self.boot_id, "shutdown", __version__
                        ),
                        qos=1,
                        retain=self._retain,
                    )
            raise
        finally:
            self._inflight = {"live": 0, "backlog": 0}
            self._backlog_busy = False

    async def _return_watch(self, client: aiomqtt.Client) -> None:
        """While on a later broker of the list, probe the earlier ones every
        ``failover.probe_interval``; when one has answered every probe for ``failover.hold``,
        say offline here (reason "failover") and end the session to move back to it.
        Nothing is lost in the move: what this broker has not acknowledged stays in the
        buffer and goes again to the earlier one (the same ``seq``, so a duplicate at most)."""
        fo = self.cfg.uplink.failover
        since: dict[int, float] = {}  # broker -> when its unbroken run of answers began
        while True:
            now = time.monotonic()
            for index in range(self._current):
                self.stats.probes += 1
                if not await _answers(self._brokers[index]):
                    since.pop(index, None)
                    continue
                if now - since.setdefault(index, now) >= fo.hold:
                    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                        async with asyncio.timeout(1.0):
                            await client.publish(
                                self.topic_status,
                                status_payload(
                                    self.cfg.gateway.id,
                                    "offline",
                                    self.boot_id,
                                    "failover",
                                    __version__,
                                ),
                                qos=1,
                                retain=self._retain,
                            )
                    raise _SwitchBack(index)
                break  # the earliest that answers is the one to go back to
            await asyncio.sleep(fo.probe_interval * random.uniform(0.8, 1.2))

    async def _start_lanes(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        online = status_payload(
            self.cfg.gateway.id,
            "online",
            self.boot_id,
            "connected",
            __version__,
            first_seq=self.buffer.first_seq,
        )
        if self.commands is not None:
            # Subscribed before "online" is said: an IOC that sees it may send a command at
            # once, and a session cut short after it (a stop, a lost link) still holds the
            # subscription at the broker, so commands sent while the gateway is away wait
            # there (found under load: stopped right after "online", before the SUBACK, the
            # session had none, and the broker dropped what came meanwhile).
            await client.subscribe(f"{self.topic_cmd}+", qos=1)
        await self._acked(client, self.topic_status, online, retain=self._retain)
        if self.commands is not None:
            _lane(tg, self._command_lane(client, self.commands), "tepi.uplink.cmd")
            if self.update_parts is not None:
                _lane(tg, self._parts_lane(client, self.update_parts), "tepi.uplink.update_parts")
        if self.alarms is not None:
            # Alarms first: every one waiting is acknowledged before any telemetry goes.
            await self._send_alarms(client, self.alarms)
            _lane(tg, self._alarm_lane(client, self.alarms), "tepi.uplink.alarms")
        # Everything not acknowledged goes to the file first, and deletes for batches acked
        # in the last session land, so the backlog is exactly what the file holds.
        await self.buffer.flush()
        boundary = self.buffer.committed_seq
        slots = asyncio.Semaphore(self.cfg.uplink.max_inflight)
        backlog_first = asyncio.Event()
        _lane(tg, self._live_lane(client, tg, slots, boundary, backlog_first), "tepi.uplink.live")
        if self.buffer.stats().depth:
            _lane(
                tg,
                self._backlog_lane(client, tg, slots, boundary, backlog_first),
                "tepi.uplink.backlog",
            )
        else:
            backlog_first.set()
        _lane(tg, self._health_loop(client), "tepi.uplink.health")
        if self.images is not None:
            _lane(tg, self._image_lane(client), "tepi.uplink.images")

    async def _watch(self, client: aiomqtt.Client) -> None:
        hub = self.commands
        prefix = self.topic_cmd
        sink = self.update_parts
        parts = "" if sink is None else f"{sink.topic}/"
        async for msg in client.messages:  # raises MqttError when the connection drops
            topic = str(msg.topic)
            payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
            if sink is not None and topic.startswith(parts):
                sink.receive(topic[len(parts) :], payload)
                continue
            if hub is None or not topic.startswith(prefix):
                continue
            props = msg.properties
            reply = Reply(
                getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None)
            )
            hub.receive(topic[len(prefix) :], payload, reply)
        raise aiomqtt.MqttError("message stream ended")

    # ---- update parts ------------------------------------------------------------------

    @staticmethod
    async def _parts_lane(client: aiomqtt.Client, sink: PartSink) -> None:
        """Subscribed to ``update_part/+/+`` only while an update transfer is open. The
        session is persistent, so the first pass of every session also unsubscribes what an
        earlier session (or process) may have left."""
        subscribed: bool | None = None
        sink.sessions += 1
        try:
            while True:
                sink.changed.clear()
                want = sink.transfer is not None
                if want != subscribed:
                    if want:
                        granted = await client.subscribe(f"{sink.topic}/+/+", qos=1)
                        code = granted[0] if granted else 0x80
                        # 3.1.1: the QoS granted or 0x80; 5: a reason code, >= 0x80 a failure
                        if code.is_failure if isinstance(code, ReasonCode) else code >= 0x80:
                            sink.refused = f"the broker refused the subscription ({code})"
                    else:
                        await client.unsubscribe(f"{sink.topic}/+/+")
                    subscribed = want
                if want:
                    sink.subscribed.set()
                await sink.changed.wait()
        finally:
            sink.sessions -= 1

    # ---- command results ---------------------------------------------------------------

    async def _command_lane(self, client: aiomqtt.Client, hub: CommandHub) -> None:
        """Each result on cmd_result (and the request's MQTT 5 response topic), acknowledged,
        then marked sent in the command log."""
        while True:
            await hub.changed.wait()
            hub.changed.clear()
            while results := await hub.pending():
                async with asyncio.TaskGroup() as tg:
                    for _, payload, reply in results:
                        data = orjson.dumps(payload)
                        tg.create_task(self._acked(client, self.topic_cmd_result, data, False))
                        if reply.topic:
                            props = None
                            if reply.correlation is not None:
                                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                                props.CorrelationData = reply.correlation
                            tg.create_task(
                                self._acked(client, reply.topic, data, False, properties=props)
                            )
                await hub.sent([rid for rid, _, _ in results])

    async def _acked(
        self,
        client: aiomqtt.Client,
        topic: str,
        payload: bytes,
        retain: bool,
        properties: Properties | None = None,
    ) -> None:
        """Publish at QoS 1 and wait for the PUBACK, however long: a slow link that
        acknowledges something now and then is alive (``_stall_watch`` judges that)."""
        if not self._awaiting:
            self._progress_at = time.monotonic()
            self._busy.set()
        self._awaiting += 1
        try:
            await client.publish(
                topic, payload, qos=1, retain=retain, timeout=math.inf, properties=properties
            )
        finally:
            self._awaiting -= 1
            if not self._awaiting:
                self._busy.clear()
        self._progress_at = time.monotonic()

    def stalled_for(self) -> float:
        """Seconds publishes have waited with no acknowledgement at all (0 when none wait):
        past ``publish_timeout`` the stall watch ends the session; much later, the uplink
        itself is wedged, which the watchdog must see."""
        if not self._busy.is_set():
            return 0.0
        return time.monotonic() - self._progress_at

    async def _stall_watch(self) -> None:
        """End the session when publishes wait and no PUBACK at all has come for
        ``publish_timeout``: the link is dead or refuses to confirm. A per-publish timeout
        would instead give up on a healthy but slow link (4G at 30 kB/s with eight messages
        in flight) and send everything again. Sleeps while nothing waits."""
        limit = self.cfg.uplink.publish_timeout
        while True:
            if self._refused.is_set():
                raise aiomqtt.MqttError("the broker refused a publish")
            await self._busy.wait()
            idle = time.monotonic() - self._progress_at
            if idle >= limit:
                raise aiomqtt.MqttError(f"no acknowledgement from the broker for {idle:.0f} s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit - idle):
                    await self._refused.wait()

    # ---- telemetry ----------------------------------------------------------------------
    #
    # Two lanes share the ``max_inflight`` slots. The live lane sends what is read during
    # this session, at once when nothing of its own is in flight (once its tick's polls are
    # over, at most ``round_wait``). The backlog lane sends
    # what was buffered before the session began, oldest first, in full batches, and may
    # hold at most ``max_inflight - 1`` slots, so live readings never queue behind a
    # backlog. The live lane starts once the backlog's first batch is on its way, so a
    # short backlog (one batch) still arrives in seq order. The IOC orders by ``seq``;
    # the messages of the two lanes interleave.

    async def _live_lane(
        self,
        client: aiomqtt.Client,
        tg: asyncio.TaskGroup,
        slots: asyncio.Semaphore,
        start: int,
        backlog_first: asyncio.Event,
    ) -> None:
        up = self.cfg.uplink
        cursor = self._live_cursor = start
        await backlog_first.wait()
        while True:
            await self.buffer.wait_for_data(cursor)
            if up.batch.linger > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(up.batch.linger):
                        await self.buffer.wait_for_data(cursor + up.batch.max_readings - 1)
            elif self._inflight["live"]:
                await self._fill_wait(cursor, up.batch.max_readings, up.batch.max_wait)
            elif self.rounds is not None and up.batch.round_wait > 0:
                await self._round_wait(self.rounds, cursor, up.batch.max_readings)
            await slots.acquire()
            upto = self.buffer.last_seq
            batch = await self.buffer.fetch(cursor, up.batch.max_readings)
            if batch is None:
                # Rows up to ``upto`` are gone (dropped by a limit): move past them.
                cursor = self._live_cursor = max(cursor, upto)
                slots.release()
                continue
            cursor = self._live_cursor = self._send(client, tg, batch, "live", slots)

    async def _backlog_lane(
        self,
        client: aiomqtt.Client,
        tg: asyncio.TaskGroup,
        slots: asyncio.Semaphore,
        upto: int,
        backlog_first: asyncio.Event,
    ) -> None:
        up = self.cfg.uplink
        own = asyncio.Semaphore(max(1, up.max_inflight - 1))
        self._backlog_busy = True
        cursor = 0
        started, sent = time.monotonic(), 0
        while True:
            await own.acquire()
            if up.backlog_rate > 0:
                # Paced: each batch waits until the readings sent so far fit the rate. It
                # waits holding only its own slot, never a shared one the live lane needs.
                await asyncio.sleep(started + sent / up.backlog_rate - time.monotonic())
            await slots.acquire()
            batch = await self.buffer.fetch(cursor, up.batch.max_readings, upto=upto)
            if batch is None:
                slots.release()
                own.release()
                break
            cursor = self._send(client, tg, batch, "backlog", slots, own)
            sent += len(batch)
            backlog_first.set()
        backlog_first.set()
        # Wait for the last acks before saying the backlog is delivered.
        for _ in range(max(1, up.max_inflight - 1)):
            await own.acquire()
        self._backlog_busy = False
        async with self._changed:
            self._changed.notify_all()
        if sent:
            log.info("backlog of %d readings delivered in %.1f s", sent, time.monotonic() - started)

    def _send(
        self,
        client: aiomqtt.Client,
        tg: asyncio.TaskGroup,
        batch: Batch,
        lane: str,
        *sems: asyncio.Semaphore,
    ) -> int:
        """Encode (cut to ``max_bytes``) and start publishing; return the new cursor."""
        up = self.cfg.uplink
        encode = encode_compact if up.encoding == "compact" else encode_telemetry
        payload, n = encode(
            self.cfg.gateway.id,
            batch,
            max_bytes=self._max_bytes,
            current_boot=self.boot_id,
            clock_synced=clock_synced(),
        )
        if n < len(batch):
            batch = batch.head(n)
        self._inflight[lane] += 1
        total = self._inflight["live"] + self._inflight["backlog"]
        self.stats.peak_inflight = max(self.stats.peak_inflight, total)
        tg.create_task(
            self._publish(client, batch, payload, lane, sems),
            name=f"tepi.uplink.publish[{batch.first_seq}]",
        )
        return batch.last_seq

    async def _round_wait(self, rounds: Rounds, cursor: int, max_readings: int) -> None:
        """With nothing in flight and a reading waiting: while polls of a tick that has come
        are under way (``Rounds``), wait for them, up to ``round_wait``, or until
        ``max_readings`` wait, so that a tick's readings go in one message."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not rounds.busy(now):
            return
        kick = self._kick
        deadline = now + self.cfg.uplink.batch.round_wait
        timer = loop.call_at(deadline, kick.set)
        try:
            while self.buffer.last_seq - cursor < max_readings:
                kick.clear()
                rounds.wait(kick)
                self.buffer.watch(cursor + max_readings, kick)
                await kick.wait()
                now = loop.time()
                if now >= deadline or not rounds.busy(now):
                    break
        finally:
            timer.cancel()
            rounds.wait(None)

    async def _fill_wait(self, cursor: int, max_readings: int, max_wait: float) -> None:
        """While live publishes are in flight, wait up to ``max_wait`` for a fuller batch:
        until a live PUBACK (``_kick``) or until ``max_readings`` wait (the buffer sets the
        same event), with no task of its own: this runs once a message."""
        kick = self._kick
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait):
                while self._inflight["live"] and self.buffer.last_seq - cursor < max_readings:
                    kick.clear()
                    self.buffer.watch(cursor + max_readings, kick)
                    await kick.wait()

    async def _publish(
        self,
        client: aiomqtt.Client,
        batch: Batch,
        payload: bytes,
        lane: str,
        sems: tuple[asyncio.Semaphore, ...],
    ) -> None:
        try:
            await self._acked(client, self.topic_telemetry, payload, retain=False)
        finally:
            for sem in sems:
                sem.release()
        # PUBACK received: only now may the readings go.
        self._inflight[lane] -= 1
        self.buffer.ack(batch)
        self.stats.messages += 1
        self.stats.readings_acked += len(batch)
        self.stats.last_ack_ts = time.time()
        if lane == "live":
            self._kick.set()
        async with self._changed:
            self._changed.notify_all()

    # ---- alarms ------------------------------------------------------------------------
    #
    # The alarm store's messages go first: at each connect, all of them, acknowledged, before
    # the telemetry lanes start; during a session, at once, beside the telemetry (they take
    # none of its slots). Deleted from the store after their PUBACK, like readings.

    async def _alarm_lane(self, client: aiomqtt.Client, hub: AlarmHub) -> None:
        while True:
            await hub.changed.wait()
            await self._send_alarms(client, hub)

    async def _send_alarms(self, client: aiomqtt.Client, hub: AlarmHub) -> None:
        while True:
            hub.changed.clear()
            msgs = await hub.store.apending(ALARM_BATCH)
            if not msgs:
                return
            gw, boot, synced = self.cfg.gateway.id, self.boot_id, clock_synced()
            async with asyncio.TaskGroup() as tg:  # in flight together, in seq order
                for m in msgs:
                    payload = alarm_payload(gw, m, current_boot=boot, clock_synced=synced)
                    tg.create_task(self._acked(client, self.topic_alarm, payload, False))
            await hub.store.aack(m.seq for m in msgs)
            hub.sent += len(msgs)

    # ---- health ------------------------------------------------------------------------

    async def _health_loop(self, client: aiomqtt.Client) -> None:
        failing = False
        while True:
            # A bug in building the health message must not end the session (and with it
            # the telemetry) or the agent: the first failure is logged with its traceback,
            # the recovery once, and health is tried again at the next interval.
            try:
                payload = health_payload(self._health())
            except Exception:  # any bug here stays here (a cancel is not an Exception)
                if not failing:
                    log.exception("the health message could not be built; trying again")
                failing = True
            else:
                if failing:
                    log.info("the health message is built again")
                failing = False
                await self._acked(client, self.topic_health, payload, self._retain)
            await asyncio.sleep(self.cfg.uplink.health_interval)

    # ---- images ------------------------------------------------------------------------
    #
    # One image in flight at a time, and only while no telemetry waits: no backlog lane at
    # work, and every reading read so far handed to the broker and acknowledged. Images so
    # use the link's idle time only.
    # On a slow link an image goes in parts (``_part_size``), one at a time, each only while
    # no telemetry waits: so a reading waits at most one part's time on the wire, and a
    # queue of images never delays it. Then the budget: ``images.rate`` bytes a second and
    # ``images.daily_bytes`` a UTC day, part by part. Event images and thumbnails go before
    # periodic snapshots (the image buffer's order). An image is its metadata (JSON) on
    # image_meta/{camera}, then its bytes on image/{camera}, or its parts on
    # image_part/{camera}/{seq}/{offset}; the MQTT 5 image messages carry the metadata in user
    # properties too. It leaves the buffer only when all are acknowledged; a session lost in
    # the middle sends it again from the start.

    def _telemetry_idle(self) -> bool:
        """No telemetry waits: no backlog lane at work, every reading read so far handed to
        the broker, and acknowledged (an image part sent now would delay no PUBACK)."""
        return (
            not self._backlog_busy
            and not self._inflight["live"]
            and self.buffer.last_seq <= self._live_cursor
        )

    async def _image_lane(self, client: aiomqtt.Client) -> None:
        hub = self.images
        assert hub is not None
        lane = hub.lane
        hub.link(True)  # images may wait in RAM for their acknowledgement (images.py)
        try:
            while True:
                hub.arrived.clear()
                meta = await hub.next()
                if meta is None:
                    lane.waiting_for = None
                    await hub.arrived.wait()
                    continue
                if not await self._image_may_go(hub, meta.size):
                    continue  # pick again: a higher class may have come meanwhile
                data = await hub.read(meta.seq)
                if data is None:
                    continue  # gone meanwhile (a quota, its age): counted by the image buffer
                await self._publish_image(client, meta, data)
                await hub.ack(meta.seq, len(data))
        finally:
            hub.link(False)

    async def _image_may_go(self, hub: ImageHub, size: int) -> bool:
        """Whether ``size`` bytes of image may go now; if not, wait a little (for the
        telemetry to be sent, the budget, or a new image) and say no."""
        lane = hub.lane
        if not self._telemetry_idle():
            lane.waiting_for = "telemetry"
            # Woken by each telemetry PUBACK; the second bounds a wait for a change
            # that notifies nobody (readings dropped by a limit before they were sent).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0), self._changed:
                    await self._changed.wait_for(self._telemetry_idle)
            return False
        wait, why = hub.budget.wait_s(size)
        if wait > 0:
            lane.waiting_for = why
            # Until the budget allows it, or a new image comes (it may be an event's,
            # which goes first), or a minute (a new UTC day).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, 60.0)):
                    await hub.arrived.wait()
            return False
        lane.waiting_for = None
        return True

    async def _publish_image(self, client: aiomqtt.Client, meta: ImageMeta, data: bytes) -> None:
        hub = self.images
        assert hub is not None
        size = len(data)
        split = self._part_size(size) < size
        info = image_meta_payload(self.cfg.gateway.id, meta, split=split)
        await self._acked(
            client, f"{self.topic_image_meta}/{meta.camera}", orjson.dumps(info), retain=False
        )
        props: Properties | None = None
        if self.cfg.uplink.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = meta.content_type
            props.UserProperty = [
                (k, orjson.dumps(v).decode() if isinstance(v, dict) else str(v))
                for k, v in info.items()
                if v is not None
            ]
        if not split:
            await self._timed(client, f"{self.topic_image}/{meta.camera}", data, props)
            hub.budget.spend(size, save=True)
            return
        topic = f"{self.topic_image_part}/{meta.camera}/{meta.seq}"
        offset = 0
        while offset < size:
            n = self._part_size(size - offset)
            if offset:  # each part only while no telemetry waits, and within the budget
                while not await self._image_may_go(hub, n):
                    pass
            await self._timed(client, f"{topic}/{offset}", data[offset : offset + n], props)
            offset += n
            hub.budget.spend(n, save=offset >= size)

    # A part is sized to take about PART_TIME_S on the wire at the link's speed, measured on
    # the image messages themselves (bytes over the time to their PUBACK, smoothed), and never
    # smaller than images.part_bytes: on a fast link an image goes whole (one message, not a
    # dozen), on a slow one in parts of part_bytes.
    PART_TIME_S = 0.025

    def _part_size(self, remaining: int) -> int:
        step = self.cfg.images.part_bytes
        if step <= 0:
            return remaining
        if self._link_bps is None:
            return min(step, remaining)
        return min(remaining, max(step, int(self._link_bps * self.PART_TIME_S)))

    async def _timed(
        self, client: aiomqtt.Client, topic: str, payload: bytes, props: Properties | None
    ) -> None:
        """Publish an image message and learn the link's speed from its PUBACK."""
        started = time.monotonic()
        await self._acked(client, topic, payload, False, props)
        took = max(time.monotonic() - started, 1e-4)
        sample = len(payload) / took
        old = self._link_bps
        self._link_bps = sample if old is None else 0.7 * old + 0.3 * sample


def _lane(tg: asyncio.TaskGroup, coro: Coroutine[Any, Any, None], name: str) -> None:
    """Start one of a session's lanes. A group already shutting down (a stop or a lost
    link came while the start-up awaited, and the await swallowed the cancellation, as
    Python 3.11's wait_for can) ends the start-up as cancelled, not with an error."""
    try:
        tg.create_task(coro, name=name)
    except RuntimeError:
        coro.close()
        raise asyncio.CancelledError from None
