"""Pipelining on Modbus TCP: several units behind one gateway address, up to
``max_outstanding`` requests in flight on one connection, answers matched by transaction id.

Against the simulator on real TCP ports: every reading reaches the unit that asked for it; a
dead unit does not hold the others back; an answer that comes after its request timed out is
dropped and counted, never taken for another request's; transaction ids wrap at 65535; and a
gateway that answers only the first frame of each read (``pipelining: false``, as pymodbus
3.16's own server) loses requests that time out and are counted, never data, until the link
falls back to one request at a time. The MBAP splitter gets bytes cut at any boundary, several
frames in a chunk, and noise between them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jsonschema
import pytest
from helpers import SCHEMA_PATH
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tepi.core.due import CalledOff, Due
from tepi.core.errors import DeviceError, DeviceUnavailable
from tepi.core.records import as_samples
from tepi.drivers.base import SharedResources
from tepi.drivers.modbus import ModbusDriver, ModbusTcpConfig
from tepi.drivers.modbus.link import ModbusLink
from tepi.drivers.modbus.tcp import LATE_KEEP, MBAP, Transactions
from tepi.gateway.pacing import Bell
from tepi_sim import Simulator

pytestmark = pytest.mark.timeout(60)
SCHEMA = json.loads(SCHEMA_PATH.read_text())

WIDE = 10  # registers 0..9: a counter at 0, then constants unit * 100 + address
OTHER = 20  # registers 20..29: constants unit * 1000 + address


def gateway(units: range, *, pipelining: bool = True) -> dict[str, Any]:
    regs: list[dict[str, Any]] = [{"address": 0, "table": "holding", "kind": "counter"}]
    return {
        "devices": [
            {
                "id": f"u{u}",
                "transport": "tcp",
                "unit": u,
                "bus": "gw",
                "pipelining": pipelining,
                "registers": regs
                + [{"address": a, "kind": "constant", "value": u * 100 + a} for a in range(1, WIDE)]
                + [
                    {"address": a, "kind": "constant", "value": u * 1000 + a}
                    for a in range(OTHER, OTHER + WIDE)
                ],
            }
            for u in units
        ]
    }


def expected(unit: int, address: int) -> list[int]:
    """Registers ``address`` to ``address + 8`` of ``unit``: what a read of 9 gets."""
    if address == OTHER:
        return [unit * 1000 + a for a in range(OTHER, OTHER + WIDE - 1)]
    return [unit * 100 + a for a in range(1, WIDE)]


@asynccontextmanager
async def linked(sim: Simulator, max_outstanding: int) -> AsyncIterator[ModbusLink]:
    host, port = sim.endpoint("u1").split(":")
    link = ModbusLink.tcp(host, int(port), max_outstanding=max_outstanding)
    try:
        yield link
    finally:
        await link.aclose()


async def test_pipelined_reads_from_many_units_each_get_their_own_values() -> None:
    """20 devices behind one address, configured with max_outstanding 8, polled all at once:
    every reading is its own unit's, no counter value is lost or given twice, and requests
    really were in flight together."""
    units = range(1, 21)
    async with Simulator(gateway(units)) as sim:
        host, port = sim.endpoint("u1").split(":")
        resources = SharedResources()
        drivers = [
            ModbusDriver(
                ModbusTcpConfig.model_validate(
                    {
                        "id": f"d{u}",
                        "driver": "modbus-tcp",
                        "host": host,
                        "port": int(port),
                        "unit": u,
                        "max_outstanding": 8,
                        "timeout": "2s",
                        "registers": [
                            {"name": "n", "address": 0},
                            *({"name": f"c{a}", "address": a} for a in range(1, WIDE)),
                        ],
                    }
                ),
                resources,
            )
            for u in units
        ]
        for d in drivers:
            await d.__aenter__()
        try:
            polls = [
                [as_samples(r) for r in await asyncio.gather(*(d.read() for d in drivers))]
                for _ in range(10)
            ]
            link = drivers[0]._link
            assert link is not None
            stats = link.stream_stats
        finally:
            for d in drivers:
                await d.__aexit__(None, None, None)
    assert stats is not None
    assert link.max_outstanding == 8
    assert 1 < stats.most_in_flight <= 8
    assert stats.late_answers == stats.stray_frames == stats.garbage_bytes == 0
    for i, u in enumerate(units):
        counts = [poll[i][0].value for poll in polls]
        assert counts == list(range(1, 11)), (u, counts)  # every value once, in order
        for poll in polls:
            assert [s.value for s in poll[i][1:]] == expected(u, 1), u


async def test_a_dead_unit_does_not_stall_the_others() -> None:
    """Unit 3 does not answer and has a 2 s timeout. While its request is out, the other
    units behind the same address are read over and over, each well within that time."""
    timeout = 2.0
    async with Simulator(gateway(range(1, 6))) as sim, linked(sim, 4) as link:
        sim.device("u3").set_fault("no_reply")
        dead = asyncio.create_task(link.read("holding", 1, 9, 3, timeout))
        await sim.device("u3").wait_requests(1, timeout=5)
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        while not dead.done() and len(latencies) < 200:
            for unit in (1, 2, 4, 5):
                started = loop.time()
                assert await link.read("holding", 1, 9, unit, timeout) == expected(unit, 1)
                latencies.append(loop.time() - started)
        assert not dead.done(), "the live units' reads ended only after the dead unit's timeout"
        with pytest.raises(DeviceUnavailable) as info:
            await dead
    assert info.value.reason == "timeout"
    assert max(latencies) < timeout / 4, f"slowest live read {max(latencies):.3f} s"


async def test_a_late_answer_is_never_taken_for_another_request() -> None:
    """Unit 1 answers 0.15 s late, after its 0.05 s timeout, and is asked for two different
    ranges in turn; unit 2 shares the connection. Late answers are dropped and counted; every
    read that succeeds, during the fault and after it, has its own range's values."""
    async with Simulator(gateway(range(1, 3))) as sim, linked(sim, 4) as link:
        sim.device("u1").set_fault("slow", delay_s=0.15)
        failed = 0
        for i in range(6):
            address = 1 if i % 2 == 0 else OTHER
            other = asyncio.create_task(link.read("holding", address, 9, 2, 5.0))
            with pytest.raises(DeviceUnavailable, match="no answer"):
                await link.read("holding", address, 9, 1, 0.05)
            failed += 1
            assert await other == expected(2, address)
        sim.device("u1").set_fault("none")
        tcp = link.stream_stats
        assert tcp is not None
        async with asyncio.timeout(10):
            while tcp.late_answers < failed:  # the simulator sends the late answers in turn
                address = 1 if tcp.requests % 2 == 0 else OTHER
                got = await link.read("holding", address, 9, 1, 2.0)
                assert got == expected(1, address), "a late answer was taken for this read"
        for address in (1, OTHER, 1, OTHER):
            assert await link.read("holding", address, 9, 1, 2.0) == expected(1, address)
    assert failed == 6
    assert tcp.late_answers == failed
    assert tcp.stray_frames == 0


async def test_transaction_ids_wrap_at_65535() -> None:
    async with Simulator(gateway(range(1, 5))) as sim, linked(sim, 4) as link:
        transactions = link._tcp
        assert transactions is not None
        transactions._tid = 65530  # as after 65,530 requests
        for _ in range(5):
            got = await asyncio.gather(*(link.read("holding", 1, 9, u, 2.0) for u in range(1, 5)))
            assert got == [expected(u, 1) for u in range(1, 5)]
        assert transactions._tid == (65530 + 20) % 65536


async def test_a_transaction_id_still_awaited_or_answered_late_is_not_reused() -> None:
    transactions = Transactions("127.0.0.1", 1, "t", max_outstanding=4)
    transactions._tid = 65533
    transactions._late = dict.fromkeys([65535, 0])
    assert [transactions._next_tid() for _ in range(3)] == [65534, 1, 2]
    for tid in range(100, 100 + LATE_KEEP + 1):
        transactions._remember_late(tid)
    assert len(transactions._late) == LATE_KEEP
    assert 65535 not in transactions._late, "the oldest is forgotten first"


async def poll_units(link: ModbusLink, units: range, rounds: int) -> dict[int, list[int | str]]:
    """``rounds`` polls of every unit, each round all at once (pollers on one grid tick):
    the counter each read got, or why it got nothing."""

    async def read(unit: int) -> int | str:
        try:
            got = await link.read("holding", 0, WIDE, unit, 0.3)
        except DeviceError as err:
            return err.reason
        assert isinstance(got, list)
        assert got[1:] == expected(unit, 1), "another unit's values"
        return int(got[0])

    seen: dict[int, list[int | str]] = {u: [] for u in units}
    for _ in range(rounds):
        for unit, got in zip(units, await asyncio.gather(*(read(u) for u in units)), strict=True):
            seen[unit].append(got)
    return seen


async def test_one_at_a_time_works_with_a_gateway_that_answers_the_first_frame_only() -> None:
    units = range(1, 11)
    async with (
        Simulator(gateway(units, pipelining=False)) as sim,
        linked(sim, 1) as link,
    ):
        seen = await poll_units(link, units, 10)
        assert sim.tcp_endpoint("u1").dropped_frames == 0
    assert all(values == list(range(1, 11)) for values in seen.values()), seen


async def test_pipelining_into_a_first_frame_only_gateway_times_out_counted_then_falls_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """max_outstanding 8 against a gateway that drops the frames that come with the first:
    those requests time out (counted, never answered with another's values), the link sees
    that units which answer lose exactly the requests sent while others were out, falls back
    to one at a time and says so once; from then on every read succeeds. Nothing is lost:
    a dropped request never reached the unit, so its counter did not move."""
    caplog.set_level(logging.WARNING, logger="tepi.drivers.modbus.tcp")
    units = range(1, 11)
    async with (
        Simulator(gateway(units, pipelining=False)) as sim,
        linked(sim, 8) as link,
    ):
        seen = await poll_units(link, units, 20)
        dropped = sim.tcp_endpoint("u1").dropped_frames
        after = await poll_units(link, units, 5)
        counters = {u: sim.device(f"u{u}").counter_value(0) for u in units}
        tcp = link.stream_stats
    assert tcp is not None
    timeouts = sum(v == "timeout" for values in seen.values() for v in values)
    assert dropped > 0
    assert timeouts >= dropped  # each dropped frame is a request that timed out
    assert set().union(*seen.values()) <= {*range(1, 21), "timeout"}
    assert tcp.pipelining_fallbacks == 1
    assert link.max_outstanding == 1
    warnings = [r for r in caplog.records if "takes one request at a time" in r.getMessage()]
    assert len(warnings) == 1, warnings
    for u in units:
        got = [v for v in seen[u] if isinstance(v, int)] + after[u]
        assert got == list(range(1, counters[u] + 1)), (u, seen[u], after[u], counters[u])
    assert all(isinstance(v, int) for values in after.values() for v in values), after


# -- the MBAP splitter ------------------------------------------------------------------------

noise = st.binary(min_size=1, max_size=12).filter(lambda b: 0 not in b)  # never a protocol id


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    order=st.permutations(range(6)),
    noise_before=st.lists(st.one_of(st.none(), noise), min_size=6, max_size=6),
    cuts=st.lists(st.integers(1, 400), max_size=12),
    counts=st.lists(st.integers(1, 20), min_size=6, max_size=6),
)
def test_the_splitter_finds_every_answer_in_any_chunks(
    order: list[int], noise_before: list[bytes | None], cuts: list[int], counts: list[int]
) -> None:
    """Six requests in flight; their answers come in any order, with noise between them,
    cut into chunks at any byte: each request gets its own answer, and only the noise is
    counted as noise."""
    asyncio.run(split_answers(order, noise_before, cuts, counts))


async def split_answers(
    order: list[int], noise_before: list[bytes | None], cuts: list[int], counts: list[int]
) -> None:
    received = asyncio.Queue[bytes]()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            received.put_nowait(data)
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transactions = Transactions("127.0.0.1", port, "split", max_outstanding=6)
    try:
        pdus = [struct.pack(">BHH", 3, 0, n) for n in counts]
        asks = [
            asyncio.create_task(transactions.transact(unit, pdu, 5.0))
            for unit, pdu in enumerate(pdus, start=1)
        ]
        sent = b""
        while len(sent) < 12 * len(pdus):
            sent += await received.get()
        tids = [MBAP.unpack_from(sent, 12 * i)[0] for i in range(len(pdus))]
        answers = {
            i: bytes([3, 2 * n]) + bytes((i * 16 + k) % 256 for k in range(2 * n))
            for i, n in enumerate(counts)
        }
        stream = b""
        for i in order:
            stream += noise_before[i] or b""
            stream += MBAP.pack(tids[i], 0, len(answers[i]) + 1, i + 1) + answers[i]
        at = 0
        for cut in sorted(cuts):
            if at < cut < len(stream):
                transactions._received(stream[at:cut])
                at = cut
        transactions._received(stream[at:])
        async with asyncio.timeout(5):
            got = await asyncio.gather(*asks)
        assert got == [answers[i] for i in range(len(pdus))]
        assert transactions.stats.garbage_bytes == sum(len(b or b"") for b in noise_before)
        assert transactions.stats.stray_frames == transactions.stats.late_answers == 0
    finally:
        await transactions.aclose()
        server.close()
        await server.wait_closed()


async def test_the_connections_counters_are_in_each_devices_health() -> None:
    """A late answer is dropped and counted where a technician sees it: in the ``protocol``
    of every device at that address (health), in the shape the payload schema gives."""
    async with Simulator(gateway(range(1, 3))) as sim:
        host, port = sim.endpoint("u1").split(":")
        resources = SharedResources()

        def device(unit: int, timeout: str) -> ModbusDriver:
            return ModbusDriver(
                ModbusTcpConfig.model_validate(
                    {
                        "id": f"d{unit}",
                        "driver": "modbus-tcp",
                        "host": host,
                        "port": int(port),
                        "unit": unit,
                        "max_outstanding": 4,
                        "timeout": timeout,
                        "retries": 0,
                        "registers": [{"name": "c1", "address": 1}],
                    }
                ),
                resources,
            )

        async with device(1, "50ms") as slow, device(2, "2s") as other:
            sim.device("u1").set_fault("slow", delay_s=0.15)
            with pytest.raises(DeviceUnavailable):
                await slow.read()
            sim.device("u1").set_fault("none")
            async with asyncio.timeout(10):
                while slow.protocol_stats()["link"]["late_answers"] == 0:  # type: ignore[index]
                    assert [s.value for s in as_samples(await other.read())] == [201]
            stats = [slow.protocol_stats(), other.protocol_stats()]
    modbus = SCHEMA["$defs"]["device_health"]["properties"]["protocol"]["oneOf"][1]
    for st_ in stats:
        jsonschema.validate(st_, modbus)
    assert stats[0]["link"] == stats[1]["link"]  # one connection, one set of counters
    link = stats[0]["link"]
    assert isinstance(link, dict)
    assert link["late_answers"] == 1
    assert link["max_outstanding"] == 4
    assert link["connects"] == 1
    assert stats[0]["timeouts"] == 1


async def test_a_connection_reset_right_after_the_accept_is_a_disconnect() -> None:
    """A gateway that accepts and resets at once (overloaded, or restarting): the requests
    that waited for the connect can find it gone again when their turn comes. Each fails as
    disconnected or unable to connect, never as a driver bug (the 2-hour soak logged an
    AssertionError three times: the request took the lost transport for granted). The
    gateway is a thread of its own, as another box is: its reset lands while the agent's
    loop is between the connect and the requests."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def gateway() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # an RST, not a FIN

    thread = threading.Thread(target=gateway, daemon=True)
    thread.start()
    transactions = Transactions("127.0.0.1", port, "reset", max_outstanding=8)
    errors: list[BaseException] = []
    # A connect that survives its own checks before the reset (stats.connects) is rare,
    # about one round in 200 here: the rounds go on until three have (at least 200 rounds,
    # at most 20 s), so that the requests meet a connection lost after it was made.
    loop = asyncio.get_running_loop()
    until = loop.time() + 20.0
    rounds = 0
    try:
        while rounds < 200 or (transactions.stats.connects < 3 and loop.time() < until):
            rounds += 1
            asks = [
                transactions.transact(unit, struct.pack(">BHH", 3, 0, 1), 2.0)
                for unit in range(1, 9)
            ]
            for res in await asyncio.gather(*asks, return_exceptions=True):
                assert isinstance(res, BaseException), res
                errors.append(res)
    finally:
        await transactions.aclose()
        stop.set()
        thread.join(5)
        listener.close()
    assert transactions.stats.connects > 0
    assert all(isinstance(e, DeviceUnavailable) for e in errors), [
        repr(e) for e in errors if not isinstance(e, DeviceUnavailable)
    ][:3]
    assert {e.reason for e in errors if isinstance(e, DeviceUnavailable)} <= {
        "cannot connect",
        "disconnected",
    }


READ_1_9 = struct.pack(">BHH", 3, 1, 9)  # registers 1 to 9, as ``expected(unit, 1)``


def words(pdu: bytes) -> list[int]:
    """The registers of a read's answer PDU (function code, byte count, words)."""
    return list(struct.unpack(f">{pdu[1] // 2}H", pdu[2:]))


async def test_requests_held_until_an_instant_go_together_then_and_not_before() -> None:
    """A poll's request handed over with a ``Due``: the link holds it until its instant, and
    every request held until that instant goes then, from one timer, as many as have a slot
    (max_outstanding 4: units 1 to 4 in flight together, unit 5 after them). None reaches the
    gateway before the instant."""
    units = range(1, 6)
    async with Simulator(gateway(units)) as sim, linked(sim, 4) as link:
        tcp = link.transactions
        assert tcp is not None
        loop = asyncio.get_running_loop()
        assert words(await tcp.transact(1, READ_1_9, 2.0)) == expected(1, 1)  # connected
        when = loop.time() + 0.3
        scheduled = len(loop._scheduled)  # type: ignore[attr-defined]
        dues = []
        for _ in units:
            due = Due()
            due.when = when
            dues.append(due)
        asks = [
            asyncio.create_task(tcp.transact(u, READ_1_9, 2.0, due=d))
            for u, d in zip(units, dues, strict=True)
        ]
        seen_before: list[int] = []
        loop.call_at(
            when - 0.05,
            lambda: seen_before.append(sum(sim.device(f"u{u}").requests for u in units)),
        )
        await asyncio.sleep(0)
        assert len(tcp._held[when]) == 5
        assert len(loop._scheduled) == scheduled + 2  # type: ignore[attr-defined]  # one, and ours
        async with asyncio.timeout(5):
            got = await asyncio.gather(*asks)
        done_at = loop.time()
    assert [words(g) for g in got] == [expected(u, 1) for u in units]
    assert seen_before == [1], "a held request reached the gateway before its instant"
    assert done_at >= when
    assert tcp.stats.most_in_flight == 4
    assert not tcp._held
    assert tcp._in_flight == 0


async def hold_two(
    tcp: Transactions,
) -> tuple[Due, Due, asyncio.Task[bytes], asyncio.Task[bytes]]:
    """Units 1 and 2 read, each held until one instant 0.2 s from now: their dues and reads."""
    first, second = Due(), Due()
    first.when = second.when = asyncio.get_running_loop().time() + 0.2
    reads = [
        asyncio.create_task(tcp.transact(u, READ_1_9, 2.0, due=d))
        for u, d in ((1, first), (2, second))
    ]
    await asyncio.sleep(0)  # both held
    assert [w.unit for w in tcp._held[first.when]] == [1, 2]
    return first, second, reads[0], reads[1]


async def test_a_held_request_called_off_is_never_sent_and_one_released_is_not_called_off() -> None:
    """The poll loop's bell calls off a request held for later: its read raises
    ``CalledOff`` at once, and nothing reaches the gateway, not even at the instant; a
    request held until the same instant and not called off goes then. Called off once it is
    released, a request goes on to its answer."""
    async with Simulator(gateway(range(1, 3))) as sim, linked(sim, 4) as link:
        tcp = link.transactions
        assert tcp is not None
        loop = asyncio.get_running_loop()
        off, kept, called_off, going = await hold_two(tcp)
        off.call_off()
        async with asyncio.timeout(1):
            with pytest.raises(CalledOff):
                await called_off
        assert loop.time() < kept.when
        async with asyncio.timeout(5):
            assert words(await going) == expected(2, 1)
        assert sim.device("u1").requests == 0, "a request called off was sent"
        assert sim.device("u2").requests == 1

        late = Due()
        late.when = loop.time() + 0.05
        answer = asyncio.create_task(tcp.transact(1, READ_1_9, 2.0, due=late))
        await sim.device("u1").wait_requests(1, timeout=5)
        late.call_off()  # sent already: nothing to call off
        async with asyncio.timeout(5):
            assert words(await answer) == expected(1, 1)
        assert tcp._in_flight == 0
        assert not tcp._busy


async def test_a_held_request_cancelled_leaves_nothing_behind() -> None:
    async with Simulator(gateway(range(1, 3))) as sim, linked(sim, 4) as link:
        tcp = link.transactions
        assert tcp is not None
        due, _, cancelled, going = await hold_two(tcp)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert [w.unit for w in tcp._held[due.when]] == [2]
        async with asyncio.timeout(5):
            assert words(await going) == expected(2, 1)
        assert sim.device("u1").requests == 0
        assert tcp._in_flight == 0
        assert not tcp._waiting
        assert words(await tcp.transact(1, READ_1_9, 2.0)) == expected(1, 1)


async def test_links_and_sleepers_due_at_one_instant_share_one_timer() -> None:
    """Devices at two addresses (two links) hold their requests until one tick, and a serial
    device's poll loop sleeps to it: one timer on the event loop for all of them, not one a
    link (each timer is a handle and a push and pop on the loop's heap)."""
    registers = [{"address": a, "kind": "constant", "value": a} for a in range(1, WIDE)]
    config = {
        "devices": [
            {"id": f"d{i}", "transport": "tcp", "unit": 1, "registers": registers} for i in (1, 2)
        ]
    }
    async with Simulator(config) as sim:
        links = [
            ModbusLink.tcp(*_host_port(sim.endpoint(f"d{i}")), max_outstanding=1) for i in (1, 2)
        ]
        try:
            loop = asyncio.get_running_loop()
            tcps = [link.transactions for link in links]
            for tcp in tcps:
                assert tcp is not None
                assert words(await tcp.transact(1, READ_1_9, 2.0)) == list(range(1, WIDE))
            when = loop.time() + 0.2
            scheduled = len(loop._scheduled)  # type: ignore[attr-defined]
            reads = []
            for tcp in tcps:
                assert tcp is not None
                due = Due()
                due.when = when
                reads.append(asyncio.create_task(tcp.transact(1, READ_1_9, 2.0, due=due)))
            sleeper = asyncio.create_task(Bell().sleep_until(when))
            await asyncio.sleep(0)
            assert len(loop._scheduled) == scheduled + 1  # type: ignore[attr-defined]
            async with asyncio.timeout(5):
                got = await asyncio.gather(*reads)
                await sleeper
            assert loop.time() >= when
            assert [words(g) for g in got] == [list(range(1, WIDE))] * 2
        finally:
            for link in links:
                await link.aclose()


def _host_port(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.split(":")
    return host, int(port)


async def test_a_held_request_on_a_link_not_connected_connects_at_its_instant() -> None:
    """Released onto a link with no connection (the first poll's, or after the gateway went
    away), a held request's task is let in to connect, then sends: the connect is not made
    before the instant, and the answer comes."""
    async with Simulator(gateway(range(1, 3))) as sim, linked(sim, 4) as link:
        tcp = link.transactions
        assert tcp is not None
        loop = asyncio.get_running_loop()
        due = Due()
        due.when = loop.time() + 0.2
        read = asyncio.create_task(tcp.transact(1, READ_1_9, 2.0, due=due))
        connects_before: list[int] = []
        loop.call_at(due.when - 0.05, lambda: connects_before.append(tcp.stats.connects))
        async with asyncio.timeout(5):
            assert words(await read) == expected(1, 1)
        assert connects_before == [0]
        assert tcp.stats.connects == 1
        assert tcp._in_flight == 0
