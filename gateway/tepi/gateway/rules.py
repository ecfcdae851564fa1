"""The ``rules:`` section: edge rules and alarms, declarative and typed (docs/rules.md).

A rule is a condition, a hold time and a list of actions. The condition is either a *leaf* on
one device (a threshold with optional hysteresis, a rate of change, a stale metric, a device
state), written inline in the rule, or ``all:`` / ``any:`` of other conditions, nested at most
:data:`MAX_DEPTH` deep. There is no expression language and nothing is evaluated as code.

This module is the models and the checks that need one rule only. The checks that need the
rest of the config (the devices and metrics a rule names, which registers may be written) run
in :mod:`tepi.gateway.configload`'s second pass; the evaluation is
:mod:`tepi.gateway.rules_engine`. A shape error is a :class:`RuleShapeError`, which names the
key it is about, so that the report points at that key's line and not only at the rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tepi.core.records import Value
from tepi.core.units import Duration

__all__ = [
    "CAMERA_REASONS",
    "CAMERA_STATES",
    "DEVICE_STATES",
    "MAX_DEPTH",
    "ActionConfig",
    "Condition",
    "PollRateAction",
    "RateConfig",
    "RuleConfig",
    "RuleShapeError",
    "Severity",
    "SnapshotAction",
    "WriteAction",
]

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_LABEL = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"  # as Prometheus spells a label name
MAX_DEPTH = 4  # a rule's all/any nest at most this deep (a leaf in the rule itself: depth 0)
MAX_CHILDREN = 32
MAX_LABELS = 16

Severity = Literal["info", "warning", "critical"]
# States a rule may watch on any device (the poller's failing and quarantined; offline: no
# answer), and the ones only a camera has (tepi.drivers.camera.driver).
DEVICE_STATES = ("failing", "quarantined", "offline")
CAMERA_STATES = ("degraded", "auth_failed")
StateName = Literal["failing", "quarantined", "offline", "degraded", "auth_failed"]
# A degraded camera's reasons: the health checks' (tepi.drivers.camera.vision.Reason) and
# the camera clock's.
CAMERA_REASONS = ("black", "frozen", "covered_or_moved", "blurred", "clock_drift")
CameraReason = Literal["black", "frozen", "covered_or_moved", "blurred", "clock_drift"]


class RuleShapeError(ValueError):
    """A rule's keys that do not go together. ``key`` is the key (relative to the condition or
    rule that raised it) the report should point at."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _hysteresis(
    above: float | None,
    below: float | None,
    clear_above: float | None,
    clear_below: float | None,
    what: str,
) -> None:
    """Raise RuleShapeError unless the levels make one threshold with its clear level on the
    right side. ``what``: "a threshold" or "a rate", for the messages."""
    if above is not None and below is not None:
        raise RuleShapeError(
            "below",
            f"above and below together: {what} has one level; for a value outside a band use "
            "any: [{above: ...}, {below: ...}]",
        )
    if clear_above is not None and clear_below is not None:
        raise RuleShapeError("clear_above", "clear_above and clear_below together: give one")
    if above is not None and clear_above is not None:
        raise RuleShapeError(
            "clear_above",
            f"clear_above goes with below; with above: {above:g} the clear level is "
            f"clear_below (at or under {above:g})",
        )
    if below is not None and clear_below is not None:
        raise RuleShapeError(
            "clear_below",
            f"clear_below goes with above; with below: {below:g} the clear level is "
            f"clear_above (at or over {below:g})",
        )
    if above is None and below is None and (clear_above, clear_below) != (None, None):
        key = "clear_above" if clear_above is not None else "clear_below"
        raise RuleShapeError(key, f"{key} is the clear level of a threshold: give above or below")
    if above is not None and clear_below is not None and clear_below > above:
        raise RuleShapeError(
            "clear_below",
            f"clear_below {clear_below:g} is over the alarm level above: {above:g}: the alarm "
            f"would clear while the value is still over it; use a value at or under {above:g}",
        )
    if below is not None and clear_above is not None and clear_above < below:
        raise RuleShapeError(
            "clear_above",
            f"clear_above {clear_above:g} is under the alarm level below: {below:g}: the alarm "
            f"would clear while the value is still under it; use a value at or over {below:g}",
        )


class RateConfig(_Model):
    """A rate of change: (newest - oldest good value in the window) / their time apart, per
    ``per``."""

    above: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="True when the value rises faster than this per `per` (e.g. 0.2 m a minute).",
    )
    below: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="True when the change per `per` is under this; negative for a fall "
        "(below: -0.2 is a fall faster than 0.2 a minute).",
    )
    clear_above: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="With below: clear only once the rate is over this (hysteresis).",
    )
    clear_below: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="With above: clear only once the rate is under this (hysteresis).",
    )
    per: Duration = Field(
        default=60.0, gt=0, le=86400, description="The rate's time unit, e.g. 1m (per minute)."
    )
    window: Duration = Field(
        default=600.0,
        gt=0,
        le=7 * 86400,
        description="Over how long the change is measured, e.g. 10m. The rate is known once "
        "the good readings in the window span half of it.",
    )

    @model_validator(mode="after")
    def _levels(self) -> Self:
        if self.above is None and self.below is None:
            raise RuleShapeError("above", "a rate needs above (rising) or below (falling)")
        _hysteresis(self.above, self.below, self.clear_above, self.clear_below, "a rate")
        return self


class Condition(_Model):
    """One condition: a leaf on a device (exactly one of above/below, rate, stale, state) or
    all/any of other conditions."""

    device: str | None = Field(
        default=None, pattern=_ID, description="The device the condition is about (its id)."
    )
    metric: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The device's metric (above, below, rate and stale; not state).",
    )
    above: float | None = Field(
        default=None, allow_inf_nan=False, description="True while the value is over this."
    )
    below: float | None = Field(
        default=None, allow_inf_nan=False, description="True while the value is under this."
    )
    clear_above: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="With below: once true, clear only when the value is over this "
        "(hysteresis; at or over below).",
    )
    clear_below: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="With above: once true, clear only when the value is under this "
        "(hysteresis; at or under above).",
    )
    rate: RateConfig | None = Field(
        default=None, description="A rate of change over a window: {above|below, per, window}."
    )
    stale: Duration | None = Field(
        default=None,
        gt=0,
        le=30 * 86400,
        description="True when the metric has had no good reading for this long.",
    )
    state: StateName | None = Field(
        default=None,
        description="True while the device is in this state: failing, quarantined, offline; "
        "a camera also degraded or auth_failed.",
    )
    reason: CameraReason | None = Field(
        default=None,
        description="With state: degraded, only this reason: black, frozen, covered_or_moved, "
        "blurred or clock_drift.",
    )
    # A tuple, not a list: the condition is immutable like the rest of the config. Each item
    # takes the same keys as a condition here.
    all: tuple[Condition, ...] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CHILDREN,
        description="True when every one of these conditions is.",
    )
    any: tuple[Condition, ...] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CHILDREN,
        description="True when at least one of these conditions is.",
    )

    @property
    def kind(self) -> Literal["threshold", "rate", "stale", "state", "all", "any"]:
        """What this condition is (valid models only)."""
        if self.all is not None:
            return "all"
        if self.any is not None:
            return "any"
        if self.rate is not None:
            return "rate"
        if self.stale is not None:
            return "stale"
        if self.state is not None:
            return "state"
        return "threshold"

    @property
    def children(self) -> tuple[Condition, ...]:
        return self.all or self.any or ()

    def depth(self) -> int:
        """How deep all/any nest under this condition (a leaf: 0)."""
        return 1 + max(c.depth() for c in self.children) if self.children else 0

    def leaves(self) -> list[Condition]:
        """The leaf conditions, in order."""
        if not self.children:
            return [self]
        return [leaf for c in self.children for leaf in c.leaves()]

    @model_validator(mode="after")
    def _shape(self) -> Self:
        threshold = self.above is not None or self.below is not None
        kinds = [
            k
            for k, given in (
                ("above" if self.below is None else "below", threshold),
                ("rate", self.rate is not None),
                ("stale", self.stale is not None),
                ("state", self.state is not None),
            )
            if given
        ]
        composite = [k for k in ("all", "any") if getattr(self, k) is not None]
        leafy = [
            k
            for k in ("device", "metric", "clear_above", "clear_below", "reason")
            if getattr(self, k) is not None
        ]
        if len(composite) == 2:
            raise RuleShapeError(
                "any", "all and any together: nest one in the other, e.g. all: [{any: [...]}]"
            )
        if composite:
            extra = kinds + leafy
            if extra:
                raise RuleShapeError(
                    extra[0],
                    f"{extra[0]} next to {composite[0]}: a condition is a leaf (device, metric, "
                    f"above ...) or {composite[0]} of conditions; move it into the list",
                )
            if self.depth() > MAX_DEPTH:
                raise RuleShapeError(
                    composite[0], f"all/any nest more than {MAX_DEPTH} deep: flatten the rule"
                )
            return self
        if not kinds:
            _hysteresis(None, None, self.clear_above, self.clear_below, "a threshold")
            raise RuleShapeError(
                "device" if self.device is not None else "above",
                "no condition: give above or below, rate, stale, state, all or any",
            )
        if len(kinds) > 1:
            raise RuleShapeError(
                kinds[1],
                f"{kinds[0]} and {kinds[1]} in one condition: give one per condition, and "
                "combine them with all: or any:",
            )
        if self.device is None:
            raise RuleShapeError("device", f"{kinds[0]} needs the device it is about")
        if kinds[0] == "state":
            if self.metric is not None:
                raise RuleShapeError("metric", "state is the device's, not a metric's: drop metric")
        elif self.metric is None:
            raise RuleShapeError("metric", f"{kinds[0]} needs the metric it is about")
        _hysteresis(self.above, self.below, self.clear_above, self.clear_below, "a threshold")
        if self.reason is not None and self.state != "degraded":
            raise RuleShapeError(
                "reason", "reason narrows state: degraded (a camera's); set state: degraded"
            )
        return self


class WriteAction(_Model):
    """Set a writable Modbus register or coil (a siren, a gate) through the driver's checked
    write, with a read-back."""

    device: str = Field(pattern=_ID, description="The Modbus device.")
    metric: str = Field(
        min_length=1,
        max_length=128,
        description="The register's name; it must be writable: true (a holding register or "
        "a coil).",
    )
    value: Value = Field(description="What to write when the rule fires, e.g. true.")
    on_resolve: Value = Field(
        default=None, description="What to write when it resolves; none: leave it."
    )

    @field_validator("value")
    @classmethod
    def _some(cls, v: Value) -> Value:
        if v is None:
            raise ValueError("the value to write is missing (null)")
        return v


class SnapshotAction(_Model):
    """Take a camera snapshot when the rule fires."""

    camera: str = Field(pattern=_ID, description="The camera (a device with driver: camera).")
    on_resolve: bool = Field(
        default=False, description="Take one when the rule resolves too (the all-clear)."
    )


class PollRateAction(_Model):
    """Poll a device faster while the rule fires; back to its poll_interval after."""

    device: str = Field(pattern=_ID, description="The device to poll faster.")
    interval: Duration = Field(
        gt=0, le=86400, description="Its poll interval while the rule fires, e.g. 10s."
    )


class ActionConfig(_Model):
    """One action: exactly one of write, snapshot or poll_rate."""

    write: WriteAction | None = Field(default=None, description="Write a register or coil.")
    snapshot: SnapshotAction | None = Field(default=None, description="Take a snapshot.")
    poll_rate: PollRateAction | None = Field(default=None, description="Poll a device faster.")
    min_interval: Duration | None = Field(
        default=None,
        ge=0,
        le=86400,
        description="This action runs at most this often; default: the rule's min_interval.",
    )

    @model_validator(mode="after")
    def _one(self) -> Self:
        given = [k for k in ("write", "snapshot", "poll_rate") if getattr(self, k) is not None]
        if not given:
            raise RuleShapeError("write", "no action: give one of write, snapshot or poll_rate")
        if len(given) > 1:
            raise RuleShapeError(
                given[1], f"{given[0]} and {given[1]} in one item: give each its own - item"
            )
        return self

    @property
    def kind(self) -> Literal["write", "snapshot", "poll_rate"]:
        if self.write is not None:
            return "write"
        return "snapshot" if self.snapshot is not None else "poll_rate"


class RuleConfig(Condition):
    """One rule: its condition (the keys of :class:`Condition`, inline), how long it must hold,
    and what to do."""

    id: str = Field(pattern=_ID, description="Unique rule id, e.g. flood-high.")
    severity: Severity = Field(default="warning", description="info, warning or critical.")
    description: str = Field(
        default="", max_length=1024, description="What the alarm means, for a person."
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        description="Free labels sent with the alarm, e.g. {site: bridge}.",
    )
    for_: Duration = Field(
        default=0.0,
        ge=0,
        le=7 * 86400,
        alias="for",
        description="How long the condition must hold before the rule fires (YAML key: for).",
    )
    clear_for: Duration = Field(
        default=0.0,
        ge=0,
        le=7 * 86400,
        description="How long the condition must be false before a firing rule resolves.",
    )
    min_interval: Duration = Field(
        default=10.0,
        ge=0,
        le=86400,
        description="Each of the rule's actions runs at most this often (a flapping sensor "
        "cannot toggle a siren); a level an action sets is deferred, not dropped.",
    )
    actions: list[ActionConfig] = Field(
        default_factory=list,
        max_length=16,
        description="What to do on firing (and resolving), besides the alarm itself.",
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, text in v.items():
            if not re.match(_LABEL, key):
                raise ValueError(
                    f"label name {key!r}: letters, digits and _, not starting with a digit"
                )
            if len(text) > 256:
                raise ValueError(f"label {key}: at most 256 characters")
        return v


def alarms_wanted(directory: Path, rules: Sequence[object]) -> bool:
    """Whether the agent needs an alarm hub: rules, or alarms left from an earlier config.
    Without one, the rules engine and the alarm store are not imported (about 1 MB of RSS,
    docs/performance.md#memory)."""
    return bool(rules) or (directory / "alarms.db").exists()
