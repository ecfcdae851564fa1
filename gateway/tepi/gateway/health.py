"""The health model: one typed snapshot of the agent, and both of its renderings.

The runtime fills in a `Health` (runtime.Agent.snapshot). The MQTT health message (the
IOC's contract, docs/payload.md#health, payload.schema.json ``$defs/health``) is its
`Health.payload`; the status API's ``/metrics`` is `prometheus`, in the Prometheus text
format. Each field carries its description, and, if Prometheus sees it, a `Prom` in its
annotation with the metric's name, kind and labels; a dict of devices carries `Each` with
the label its keys become. Adding a health field is one edit here, plus its schema and
docs entries, which tests/test_gateway/test_health.py checks against this model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tepi.buffer import BufferStats
from tepi.buffer.records import ALARM_DROP_REASONS, IMAGE_DROP_REASONS  # the stores' lists
from tepi.gateway.commands import REASONS as COMMAND_REASONS
from tepi.gateway.poller import DeviceStats

if TYPE_CHECKING:
    # Only ``prometheus`` needs it, at the first /metrics scrape: most agents never import it.
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

STATES = ("starting", "ok", "failing", "quarantined")
DROP_REASONS = ("buffer_full", "expired", "overflow")
# A device's failed polls are counted by reason. Reasons are meant to be a few fixed words
# (tepi.core.errors), but a driver that put variable text in them (a third-party one, a
# device's own message) would grow the health message and /metrics' label set with every
# new text: past this many, the least frequent are summed under "other".
MAX_ERROR_REASONS = 16


@dataclass(frozen=True)
class Prom:
    """How a field is exposed to Prometheus.

    ``name`` is the exposed name (a counter's ends in ``_total``). A scalar gives one sample
    (None: none). A dict gives one sample per key, under the label ``label``; ``keys`` are
    always exposed (0 when absent). A string with ``keys`` is an enum: one sample per key
    under ``label``, 1 for the value it has, 0 for the others. ``value`` turns the field's
    value into the sample's (a unit conversion, a test), and None means no sample. ``help``
    is the metric's help when the field's description does not fit it.
    """

    name: str
    kind: Literal["gauge", "counter"]
    label: str | None = None
    keys: tuple[str, ...] = ()
    value: Callable[[Any], float | None] | None = None
    help: str | None = None

    def __post_init__(self) -> None:
        if (self.kind == "counter") != self.name.endswith("_total"):
            raise ValueError(f"{self.name}: counters, and only counters, end in _total")


def gauge(name: str, **kw: Any) -> Prom:
    return Prom(name, "gauge", **kw)


def counter(name: str, **kw: Any) -> Prom:
    return Prom(name, "counter", **kw)


@dataclass(frozen=True)
class Each:
    """A dict of sub-models: its keys become the label ``label`` of their metrics."""

    label: str


def _ms_to_s(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _ok(error: str | None) -> float:
    return float(error is None)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def payload(self) -> dict[str, Any]:
        """As JSON-ready data: the MQTT health message's shape, field for field."""
        return self.model_dump()


Counts = dict[str, int]


class ClockHealth(_Model):
    synced: bool = Field(description="The kernel considers the wall clock synchronised.")
    source: Literal["system", "gps"] | None = Field(
        description="What dates new readings: the synced system clock, a fresh GPS time, "
        "or nothing trustworthy (readings flagged unsynced)."
    )
    gps_device: str | None = Field(
        description="The nmea device marked clock_source that gave the last GPS time."
    )
    gps_fix_age_s: Annotated[float | None, gauge("tepi_clock_gps_fix_age_seconds")] = Field(
        description="Seconds since the last valid GPS time."
    )
    gps_offset_s: Annotated[float | None, gauge("tepi_clock_gps_offset_seconds")] = Field(
        description="GPS time minus the system clock: how far off the system clock is."
    )


class BufferHealth(_Model):
    readings: Annotated[int, gauge("tepi_buffer_readings")] = Field(
        description="Readings not yet acknowledged by the broker."
    )
    bytes: Annotated[int, gauge("tepi_buffer_bytes")] = Field(
        description="Bytes used by the buffer file."
    )
    max_bytes: Annotated[int, gauge("tepi_buffer_max_bytes")] = Field(
        description="The buffer file's limit, in bytes."
    )
    oldest_age_s: Annotated[float | None, gauge("tepi_buffer_oldest_age_seconds")] = Field(
        description="Age of the oldest unsent reading; null when the buffer is empty."
    )
    pending: Annotated[int, gauge("tepi_buffer_pending")] = Field(
        description="Readings in RAM, neither acknowledged nor committed yet."
    )
    dropped: Annotated[
        Counts, counter("tepi_buffer_dropped_total", label="reason", keys=DROP_REASONS)
    ] = Field(description="Readings dropped, by reason.")
    quarantined_files: Annotated[int, counter("tepi_buffer_quarantined_files_total")] = Field(
        description="Unreadable buffer files moved aside since start."
    )
    write_errors: Annotated[int, counter("tepi_buffer_write_errors_total")] = Field(
        description="Commits that failed."
    )
    acked_in_memory: Annotated[int, counter("tepi_buffer_acked_in_memory_total")] = Field(
        description="Readings the broker acknowledged before their commit was due: "
        "never written to disk."
    )
    written: Annotated[int, counter("tepi_buffer_written_total")] = Field(
        description="Readings written to the buffer file."
    )
    commits: Annotated[int, counter("tepi_buffer_commits_total")] = Field(
        description="Write transactions."
    )
    file_error: Annotated[
        str | None,
        gauge("tepi_buffer_file_ok", value=_ok, help="The buffer file can be written (1/0)."),
    ] = Field(
        description="Why the buffer file cannot be used (readings are then kept in memory "
        "only); null when it can."
    )

    @classmethod
    def of(cls, st: BufferStats, now: float) -> BufferHealth:
        """The buffer's part of health from its stats, at wall-clock ``now``."""
        oldest = None if st.oldest_ts is None else round(max(now - st.oldest_ts, 0), 1)
        return cls(
            readings=st.depth,
            bytes=st.bytes_used,
            max_bytes=st.max_bytes,
            oldest_age_s=oldest,
            pending=st.pending,
            dropped=st.dropped,
            quarantined_files=st.quarantined_files,
            write_errors=st.write_errors,
            acked_in_memory=st.acked_in_memory,
            written=st.written,
            commits=st.commits,
            file_error=st.file_error,
        )


class UplinkHealth(_Model):
    connected: Annotated[bool, gauge("tepi_uplink_connected")] = Field(
        description="Connected to the broker (1/0)."
    )
    connects: Annotated[int, counter("tepi_uplink_connects_total")] = Field(
        description="Connections made since start."
    )
    messages: Annotated[int, counter("tepi_uplink_messages_total")] = Field(
        description="Telemetry messages acknowledged by the broker."
    )
    readings_acked: Annotated[int, counter("tepi_uplink_readings_acked_total")] = Field(
        description="Readings acknowledged by the broker."
    )
    publish_rate: float = Field(
        description="Readings acknowledged per second since the last health message."
    )
    last_ack_ts: Annotated[float | None, gauge("tepi_uplink_last_ack_timestamp_seconds")] = Field(
        description="When the broker last acknowledged telemetry."
    )
    errors: Annotated[Counts, counter("tepi_uplink_errors_total", label="kind")] = Field(
        description="Link failures, by kind."
    )
    broker: str | None = Field(
        description="The url of the broker in use (one of uplink.url's list); null while "
        "not connected.",
    )


class DeviceHealth(_Model):
    state: Annotated[
        Literal["starting", "ok", "failing", "quarantined"],
        gauge(
            "tepi_device_state",
            label="state",
            keys=STATES,
            help="1 for the state each device is in, 0 for the others.",
        ),
    ] = Field(description="starting, ok, failing or quarantined.")
    polls: Annotated[int, counter("tepi_device_polls_total")] = Field(description="Polls.")
    readings: Annotated[int, counter("tepi_device_readings_total")] = Field(
        description="Readings taken."
    )
    bad_readings: Annotated[int, counter("tepi_device_bad_readings_total")] = Field(
        description="Bad readings taken."
    )
    bad_suppressed: Annotated[int, counter("tepi_device_bad_suppressed_total")] = Field(
        description="Bad readings not sent: the same reason as the last one sent for the "
        "metric, within bad_heartbeat of it."
    )
    errors: Annotated[Counts, counter("tepi_device_errors_total", label="reason")] = Field(
        description="Failed polls, by reason."
    )
    consecutive_failures: Annotated[int, gauge("tepi_device_consecutive_failures")] = Field(
        description="Failed polls in a row."
    )
    missed_polls: Annotated[int, counter("tepi_device_missed_polls_total")] = Field(
        description="Poll ticks skipped because an earlier poll overran."
    )
    internal_errors: Annotated[int, counter("tepi_device_internal_errors_total")] = Field(
        description="Exceptions the driver raised that it should not have (a driver bug)."
    )
    last_ok_ts: Annotated[float | None, gauge("tepi_device_last_ok_timestamp_seconds")] = Field(
        description="When the last good poll was."
    )
    last_error: str | None = Field(description="The last error.")
    last_poll_ms: Annotated[
        float | None,
        gauge(
            "tepi_device_last_poll_duration_seconds",
            value=_ms_to_s,
            help="How long the last poll took, in seconds.",
        ),
    ] = Field(description="How long the last poll took, in milliseconds.")
    probe_interval_s: Annotated[float | None, gauge("tepi_device_probe_interval_seconds")] = Field(
        description="While quarantined: seconds between probes."
    )
    protocol: dict[str, Any] | None = Field(
        description="The driver's own counters (Modbus, serial; see docs/payload.md), or null."
    )

    @classmethod
    def of(cls, st: DeviceStats) -> DeviceHealth:
        return cls(
            state=st.state,
            polls=st.polls,
            readings=st.readings,
            bad_readings=st.bad_readings,
            bad_suppressed=st.bad_suppressed,
            errors=bounded_counts(st.errors),
            consecutive_failures=st.consecutive_failures,
            missed_polls=st.missed_polls,
            internal_errors=st.internal_errors,
            last_ok_ts=st.last_ok_ts,
            last_error=st.last_error,
            last_poll_ms=None if st.last_poll_s is None else round(st.last_poll_s * 1000, 1),
            probe_interval_s=st.next_probe_s,
            protocol=None if st.protocol is None else st.protocol(),
        )


def bounded_counts(counts: Mapping[str, int], limit: int = MAX_ERROR_REASONS) -> Counts:
    """``counts`` with at most ``limit`` keys: the most frequent ones, and "other" for the
    sum of the rest (see MAX_ERROR_REASONS)."""
    if len(counts) <= limit:
        return dict(counts)
    named = sorted(
        (kv for kv in counts.items() if kv[0] != "other"), key=lambda kv: (-kv[1], kv[0])
    )
    top = dict(named[: limit - 1])
    top["other"] = sum(counts.values()) - sum(top.values())
    return top


class ConfigHealth(_Model):
    reloads: Annotated[int, counter("tepi_config_reloads_total")] = Field(
        description="Reloads asked for (SIGHUP) since start."
    )
    last_reload_ts: Annotated[float | None, gauge("tepi_config_last_reload_timestamp_seconds")] = (
        Field(description="When the last reload was.")
    )
    last_reload_ok: Annotated[bool | None, gauge("tepi_config_last_reload_ok")] = Field(
        description="The last reload was applied (1/0); null before the first."
    )
    errors: list[str] = Field(
        max_length=20, description="Why the last reload was refused, each with file:line."
    )
    restart_needed: list[str] = Field(
        description="Settings changed in the file that only a restart applies."
    )
    version: str = Field(
        description="The config running: base (the service's config file) or vN, a pushed "
        "version (docs/operations.md, Remote operations)."
    )
    trial: bool = Field(description="A pushed config is on trial now (not yet confirmed).")


class ProcessHealth(_Model):
    cpu_percent: float = Field(
        description="CPU use since the previous health message (100 = one core)."
    )
    cpu_seconds: Annotated[float, counter("tepi_process_cpu_seconds_total")] = Field(
        description="CPU time used."
    )
    rss_bytes: Annotated[int, gauge("tepi_process_resident_memory_bytes")] = Field(
        description="Resident memory."
    )
    disk_free_bytes: Annotated[int | None, gauge("tepi_disk_free_bytes")] = Field(
        description="Free space on the filesystem of gateway.data_dir."
    )


class ImageClassHealth(_Model):
    count: int = Field(description="Images of this class waiting to be sent.")
    bytes: int = Field(description="Their bytes on disk.")


class ImageBudgetHealth(_Model):
    rate: int = Field(description="images.rate: image bytes a second allowed (0: no limit).")
    daily_bytes: int = Field(description="images.daily_bytes: a UTC day's cap (0: none).")
    sent_today: int = Field(description="Image bytes sent this UTC day.")
    state: Literal["ok", "daily_cap"] = Field(
        description="daily_cap: the day's allowance is spent; images wait for the next day."
    )


class ImagesHealth(_Model):
    count: Annotated[int, gauge("tepi_images")] = Field(
        description="Images in the image buffer, waiting to be sent."
    )
    bytes: Annotated[int, gauge("tepi_images_bytes")] = Field(
        description="Bytes of the images kept (in RAM included)."
    )
    max_bytes: Annotated[int, gauge("tepi_images_max_bytes")] = Field(
        description="images.max_bytes: the image buffer's limit."
    )
    by_class: dict[str, ImageClassHealth] = Field(
        description="Waiting images by class: event, thumbnail, snapshot."
    )
    in_ram: ImageClassHealth = Field(
        description="Of them, those kept in RAM within images.commit_interval: written to "
        "disk only if the broker has not acknowledged them by then."
    )
    oldest_ts: float | None = Field(description="When the oldest waiting image was taken.")
    dropped: Annotated[
        Counts,
        counter("tepi_images_dropped_total", label="reason", keys=IMAGE_DROP_REASONS),
    ] = Field(
        description="Images dropped or refused, by reason: quota (evicted for a newer, "
        "higher-class one), age (images.max_age), too_large, refused_priority (only higher "
        "classes could have made room), disk_reserve (the readings' share of the disk), "
        "write_error (a full or failing disk), damaged (found missing or altered when read)."
    )
    reconciled: Counts = Field(
        description="Repairs at start-up: files without an index row, rows without a file."
    )
    sent: Annotated[int, counter("tepi_images_sent_total")] = Field(
        description="Images acknowledged by the broker since start."
    )
    bytes_sent: Annotated[int, counter("tepi_images_sent_bytes_total")] = Field(
        description="Their bytes."
    )
    last_sent_ts: float | None = Field(description="When the broker last acknowledged one.")
    waiting_for: Literal["telemetry", "budget", "daily_cap"] | None = Field(
        description="Why the next image is not on its way: telemetry goes first, the byte "
        "rate, or the day's cap; null when it is (or none waits)."
    )
    budget: ImageBudgetHealth = Field(description="The images' share of the link.")


ACTION_OUTCOMES = ("ok", "failed", "deferred", "skipped")


class AlarmsHealth(_Model):
    firing: Annotated[int, gauge("tepi_alarms_firing")] = Field(
        description="Rules whose alarm is firing now."
    )
    firing_rules: list[str] = Field(description="Their ids (at most 50 listed).")
    pending: Annotated[int, gauge("tepi_alarms_pending")] = Field(
        description="Alarm messages not yet acknowledged by the broker."
    )
    queued: int = Field(
        description="Transitions and action outcomes not yet in the alarm store (grows only "
        "while the disk refuses writes)."
    )
    rows: int = Field(description="Rows in the alarm store: alarm states plus messages.")
    max_alarms: int = Field(description="The store's bound on rows (firing alarms may exceed it).")
    fired: Annotated[int, counter("tepi_alarms_fired_total")] = Field(
        description="Alarms that started firing since start."
    )
    resolved: Annotated[int, counter("tepi_alarms_resolved_total")] = Field(
        description="Alarms resolved since start."
    )
    sent: Annotated[int, counter("tepi_alarms_sent_total")] = Field(
        description="Alarm messages acknowledged by the broker since start."
    )
    dropped: Annotated[
        Counts, counter("tepi_alarms_dropped_total", label="reason", keys=ALARM_DROP_REASONS)
    ] = Field(
        description="Rows the store's bound dropped, by reason: resolved_state, "
        "resolved_message, firing_followup. A firing alarm is never dropped."
    )
    write_errors: Annotated[int, counter("tepi_alarms_write_errors_total")] = Field(
        description="Writes the alarm store refused (a full or failing disk); retried."
    )
    actions: Annotated[
        Counts, counter("tepi_alarm_actions_total", label="outcome", keys=ACTION_OUTCOMES)
    ] = Field(
        description="Rule actions by outcome: ok, failed (after its retries), deferred "
        "(a write held back by min_interval), skipped (a snapshot within min_interval)."
    )
    action_retries: Annotated[int, counter("tepi_alarm_action_retries_total")] = Field(
        description="Attempts of actions that failed and were tried again."
    )
    last_action_error: str | None = Field(description="Why the last failed action failed.")


COMMAND_OUTCOMES = ("accepted", "replayed", "done", "failed")


class CommandsHealth(_Model):
    requests: Annotated[
        Counts, counter("tepi_commands_total", label="outcome", keys=COMMAND_OUTCOMES)
    ] = Field(
        description="Commands from the IOC since start: accepted (checked, and run), replayed "
        "(an id already known: answered from the log, not run), done, failed."
    )
    refused: Annotated[
        Counts, counter("tepi_commands_refused_total", label="reason", keys=COMMAND_REASONS)
    ] = Field(description="Requests refused before they ran, by reason.")
    log_errors: Annotated[int, counter("tepi_commands_log_errors_total")] = Field(
        description="Requests not run because the command log could not be written."
    )


class Health(_Model):
    """The health message (docs/payload.md#health)."""

    v: Literal[1] = Field(1, description="Payload version.")
    gateway: str = Field(description="The gateway's id.")
    boot: str = Field(description="The boot id.")
    version: str = Field(description="tepi's version.")
    previous_version: str | None = Field(
        default=None,
        description="The version this one replaced by an update that was confirmed "
        "(docs/update.md); null when not known.",
    )
    ts: float = Field(description="When the message was made (epoch seconds).")
    uptime_s: Annotated[float, gauge("tepi_uptime_seconds")] = Field(
        description="Seconds since the agent started."
    )
    clock_synced: Annotated[bool, gauge("tepi_clock_synced")] = Field(
        description="The system clock is synchronised (1/0)."
    )
    clock: ClockHealth = Field(description="The wall clock and GPS time.")
    buffer: BufferHealth = Field(description="The store-and-forward buffer.")
    uplink: UplinkHealth = Field(description="The link to the broker.")
    devices: Annotated[dict[str, DeviceHealth], Each("device")] = Field(
        description="Each device, by id."
    )
    images: ImagesHealth | None = Field(
        default=None,
        description="The image buffer and the images' link budget; null without cameras.",
    )
    alarms: AlarmsHealth | None = Field(
        default=None, description="The rules' alarms and actions; null without rules."
    )
    commands: CommandsHealth | None = Field(
        default=None, description="Commands from the IOC; null when commands.enabled is off."
    )
    config: ConfigHealth = Field(description="Config reloads.")
    process: ProcessHealth = Field(description="The agent's process.")


# ---- Prometheus ----------------------------------------------------------------------

UP = gauge("tepi_up")
UP_HELP = "The agent answers (1)."


@dataclass(frozen=True)
class Exported:
    """One metric family: its spec, the labels it carries, its help, and the field's path."""

    prom: Prom
    labels: tuple[str, ...]
    help: str
    path: str


def _meta(model: type[BaseModel], name: str, kind: type[Any]) -> Any:
    return next((m for m in model.model_fields[name].metadata if isinstance(m, kind)), None)


def _sub_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    ann = model.model_fields[name].annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    args = getattr(ann, "__args__", ())
    if _meta(model, name, Each) is None and len(args) == 2 and type(None) in args:
        # An optional section (``images``: null without cameras).
        sub = next(a for a in args if a is not type(None))
        return sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
    if _meta(model, name, Each) is not None and args:
        sub = args[-1]
        return sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
    return None


def exported(
    model: type[BaseModel] = Health, labels: tuple[str, ...] = (), prefix: str = ""
) -> Iterator[Exported]:
    """Every metric family the model gives, in field order (``tepi_up`` first)."""
    if model is Health:
        yield Exported(UP, (), UP_HELP, "")
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        prom = _meta(model, name, Prom)
        if prom is not None:
            extra = (prom.label,) if prom.label else ()
            help = prom.help or info.description or name
            yield Exported(prom, labels + extra, help, path)
        sub = _sub_model(model, name)
        if sub is not None:
            each = _meta(model, name, Each)
            if each is not None:
                yield from exported(sub, (*labels, each.label), f"{path}.{{{each.label}}}.")
            else:
                yield from exported(sub, labels, f"{path}.")


EXPORTED = tuple(exported())


def _samples(prom: Prom, value: Any) -> Iterator[tuple[tuple[str, ...], float]]:
    if prom.value is not None:
        value = prom.value(value)
    if value is None:
        return
    if isinstance(value, dict):
        for key in sorted(set(prom.keys) | set(value)):
            yield (key,), float(value.get(key, 0))
    elif isinstance(value, str):
        for key in prom.keys:
            yield (key,), 1.0 if value == key else 0.0
    else:
        yield (), float(value)


def _fill(
    obj: BaseModel, labels: tuple[str, ...], out: dict[str, GaugeMetricFamily | CounterMetricFamily]
) -> None:
    model = type(obj)
    for name in model.model_fields:
        value = getattr(obj, name)
        prom = _meta(model, name, Prom)
        if prom is not None:
            for extra, v in _samples(prom, value):
                out[prom.name].add_metric([*labels, *extra], v)
        if isinstance(value, BaseModel):
            _fill(value, labels, out)
        elif _meta(model, name, Each) is not None:
            for key, sub in sorted(value.items()):
                _fill(sub, (*labels, key), out)


def prometheus(health: Health) -> list[Metric]:
    """The metric families of one health snapshot, for a prometheus-client collector."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    out: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
    for e in EXPORTED:
        cls = GaugeMetricFamily if e.prom.kind == "gauge" else CounterMetricFamily
        out[e.prom.name] = cls(e.prom.name, e.help, labels=list(e.labels))
    out[UP.name].add_metric([], 1.0)
    _fill(health, (), out)
    return list(out.values())
