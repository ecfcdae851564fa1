"""The config models: what ``tepi.yaml`` may contain. Loading and error reports are in
``tepi.gateway.configload``; every key is documented in docs/config.md.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from tepi.core.secrets import resolve_credential
from tepi.core.units import Duration, Size
from tepi.drivers.registry import DeviceConfig
from tepi.gateway.rules import RuleConfig

__all__ = [
    "PASSWORD_CREDENTIAL",
    "SECRETS_DIR",
    "Config",
    "DashboardSection",
    "ImagesSection",
    "RuleConfig",
    "UplinkSection",
    "resolve_credential",
]

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Model):
    id: str = Field(pattern=_ID, description="Unique gateway id; part of every MQTT topic.")
    data_dir: Path = Field(
        default=Path("/var/lib/tepi"), description="Where the buffer database and state live."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level: debug, info, warning or error."
    )


class TlsSection(_Model):
    ca_file: Path | None = Field(
        default=None,
        description="CA bundle that signs the broker's certificate. "
        "Default: the system's trusted CAs.",
    )
    cert_file: Path | None = Field(default=None, description="Client certificate (mutual TLS).")
    key_file: Path | None = Field(default=None, description="Client private key (mutual TLS).")

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self


class BatchSection(_Model):
    max_readings: int = Field(
        default=500, ge=1, le=100_000, description="Most readings in one message."
    )
    max_bytes: Size = Field(
        default=64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest message payload, e.g. 64KiB.",
    )
    max_wait: Duration = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="How long a reading may wait to fill a batch while earlier publishes are "
        "still unacknowledged. With nothing in flight, readings are sent at once (see round_wait).",
    )
    linger: Duration = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Hold new readings this long (or until max_readings wait) before sending, "
        "for fewer, bigger messages on a metered link. 0: send at once.",
    )
    round_wait: Duration = Field(
        default=0.05,
        ge=0,
        le=10,
        description="With linger 0 and nothing in flight, hold a tick's first readings until "
        "the other polls of that tick are over (or max_readings wait), at most this long: a "
        "tick's readings in one message, not the first answer alone. A device whose last poll "
        "took longer than this is not waited for. 0: send at once.",
    )


class ReconnectSection(_Model):
    min_delay: Duration = Field(default=1.0, gt=0, description="First reconnect delay cap.")
    max_delay: Duration = Field(default=120.0, gt=0, description="Largest reconnect delay cap.")
    probe_interval: Duration = Field(
        default=1.0,
        ge=0,
        le=60,
        description="While the broker cannot be reached, try a bare TCP connection to it this "
        "often (with jitter) between reconnect attempts; when one succeeds, reconnect at once "
        "(after spread) instead of sitting out the backoff. 0: no probes. While an alarm "
        "waits to be sent, twice as often, and no spread.",
    )
    spread: Duration = Field(
        default=3.0,
        ge=0,
        le=600,
        description="After a probe finds the broker back, wait a random time up to this long "
        "before reconnecting, so a fleet that lost the broker together does not return at "
        "the same instant.",
    )


class FailoverSection(_Model):
    hold: Duration = Field(
        default=60.0,
        ge=0,
        le=86400,
        description="With a list of brokers in uplink.url: while connected to a later one, "
        "an earlier one must answer every probe for this long before the agent moves back "
        "to it, so a broker that flaps is not followed at each blink. 0: at the first answer.",
    )
    probe_interval: Duration = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="While connected to a later broker of the list, how often the earlier "
        "ones are probed (a bare TCP connection, closed at once).",
    )


class UplinkSection(_Model):
    url: str | list[str] = Field(
        description="Broker: mqtt://host[:1883] or mqtts://host[:8883]; or a list of them, "
        "tried in order (a failover list, all mqtt:// or all mqtts://): the agent uses the "
        "first that answers and returns to an earlier one once it is back for failover.hold."
    )
    failover: FailoverSection = Field(
        default_factory=FailoverSection,
        description="Returning to an earlier broker of a failover list (uplink.url).",
    )
    topic_prefix: str = Field(
        default="ioc/v1",
        pattern=r"^[^#+\s]+$",
        description="Topics are {topic_prefix}/{gateway.id}/...",
    )
    client_id: str | None = Field(
        default=None, description="MQTT client id. Default: tepi-{gateway.id}."
    )
    protocol: Literal["3.1.1", "5"] = Field(
        default="3.1.1", description="MQTT version: 3.1.1 or 5."
    )
    username: str | None = Field(default=None, description="MQTT user name.")
    password_file: Path | None = Field(
        default=None,
        description="File holding the MQTT password. A relative name is looked "
        "up in $CREDENTIALS_DIRECTORY (systemd LoadCredential).",
    )
    password_env: str | None = Field(
        default=None, description="Name of an environment variable holding the MQTT password."
    )
    tls: TlsSection | None = Field(default=None, description="TLS settings; only with mqtts://.")
    batch: BatchSection = Field(default_factory=BatchSection, description="Batching of telemetry.")
    encoding: Literal["json", "compact"] = Field(
        default="json",
        description="Telemetry payloads: json, or compact (zstd-compressed columns, for metered "
        "links; see docs/payload.md).",
    )
    max_inflight: int = Field(
        default=8, ge=1, le=100, description="Telemetry messages awaiting the broker's ack at once."
    )
    backlog_rate: float = Field(
        default=0,
        ge=0,
        le=10_000_000,
        description="The most readings a second the backlog lane sends after an outage (0: "
        "as fast as the broker takes them), so a fleet that reconnects together does not "
        "flood the IOC. Live readings are never held back by it.",
    )
    keepalive: Duration = Field(default=30.0, ge=5, le=3600, description="MQTT keepalive.")
    session_expiry: Duration = Field(
        default=86400.0,
        ge=0,
        le=30 * 86400,
        description="How long the broker keeps the gateway's session while it is offline: "
        "its subscription to commands, and the commands sent meanwhile (run when it is back, "
        "unless they expired). 0: a clean session at each connect.",
    )
    publish_timeout: Duration = Field(
        default=30.0,
        gt=0,
        description="While publishes await their ack, no ack at all for this long counts "
        "as a dead link: reconnect and send again.",
    )
    health_interval: Duration = Field(
        default=60.0, ge=1, description="How often health is published."
    )
    reconnect: ReconnectSection = Field(
        default_factory=ReconnectSection, description="Reconnect backoff (full jitter)."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | list[str]) -> str | list[str]:
        urls = [v] if isinstance(v, str) else v
        if not urls:
            raise ValueError("the list of brokers is empty: give at least one url")
        for i, url in enumerate(urls):
            where = "" if isinstance(v, str) else f"url {i + 1} ({url}): "
            parts = urlsplit(url)
            if parts.scheme not in ("mqtt", "mqtts"):
                raise ValueError(
                    f"{where}the scheme must be mqtt:// or mqtts://, not {parts.scheme or 'none'}"
                )
            if not parts.hostname:
                raise ValueError(f"{where}the url has no host")
            if parts.username is not None or parts.password is not None:
                where = "" if isinstance(v, str) else f"url {i + 1}: "  # never echo a password
                raise ValueError(
                    f"{where}no user or password in the url (it shows in logs and health): "
                    "use username and password_file"
                )
            try:
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError as err:
                raise ValueError(f"{where}bad port in url: {err}") from None
        # A failover list that mixes them would fall back to plaintext when the TLS broker
        # is away: the link's security must not depend on which broker answers.
        if len({urlsplit(u).scheme for u in urls}) > 1:
            raise ValueError(
                "the list mixes mqtt:// and mqtts://: use one scheme for every broker (a "
                "failover must never fall back to plaintext)"
            )
        if len(set(urls)) < len(urls):
            raise ValueError("the list names a broker twice")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.tls is not None and not self.secure:
            raise ValueError("tls is set but the url is mqtt://: use mqtts:// (never plaintext)")
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("set password_file or password_env, not both")
        return self

    @property
    def urls(self) -> tuple[str, ...]:
        """The brokers, in the order they are tried (one, for a single url)."""
        return (self.url,) if isinstance(self.url, str) else tuple(self.url)

    @property
    def brokers(self) -> tuple[tuple[str, int], ...]:
        """Each broker's (host, port), in the order of ``urls``."""
        default = 8883 if self.secure else 1883
        return tuple((urlsplit(u).hostname or "", urlsplit(u).port or default) for u in self.urls)

    @property
    def secure(self) -> bool:
        return urlsplit(self.urls[0]).scheme == "mqtts"

    @property
    def host(self) -> str:
        """The first broker's host (the only one, without a failover list)."""
        return self.brokers[0][0]

    @property
    def port(self) -> int:
        """The first broker's port."""
        return self.brokers[0][1]

    def read_password(self, secrets_dir: Path | None = None) -> SecretStr | None:
        """The password from its file or variable. Raises OSError/KeyError if missing.
        ``secrets_dir``: see resolve_credential."""
        if self.password_env is not None:
            return SecretStr(os.environ[self.password_env])
        if self.password_file is None:
            return None
        path = resolve_credential(self.password_file, secrets_dir)
        return SecretStr(path.read_text().strip("\r\n"))


# The unit's LoadCredential=mqtt-password:/etc/tepi/secrets/mqtt-password (systemd/tepi.service,
# written by systemd/install.sh): the credential's name, and where systemd loads it from.
PASSWORD_CREDENTIAL = "mqtt-password"  # noqa: S105 - a name, not a secret
SECRETS_DIR = Path("/etc/tepi/secrets")


class BufferSection(_Model):
    max_bytes: Size = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Largest the buffer file may grow; then the oldest go.",
    )
    max_age: Duration | None = Field(
        default=None, gt=0, description="Optional: drop readings older than this."
    )
    commit_interval: Duration = Field(
        default=0.2,
        gt=0,
        le=60,
        description="Every reading is acknowledged by the broker or committed to disk within "
        "this time of being read.",
    )
    commit_max_readings: int = Field(
        default=10_000,
        ge=1,
        le=100_000,
        description="Commit sooner once this many readings wait in RAM.",
    )
    sync: Literal["full", "normal"] = Field(
        default="full",
        description="full: each commit survives a power cut (fsync). normal: "
        "survives a crash of tepi, may lose the last commits on a power cut; fewer SD writes.",
    )
    max_pending: int = Field(
        default=100_000,
        ge=1000,
        description="Readings held in RAM "
        "while the disk refuses writes; beyond this the oldest are dropped.",
    )


class ImagesSection(_Model):
    max_bytes: Size = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Most bytes of images kept on disk (data_dir/images/); then the lowest "
        "class (snapshot, then thumbnail, then event) and oldest go first.",
    )
    max_age: Duration | None = Field(
        default=None, gt=0, description="Optional: drop images older than this, sent or not."
    )
    max_image_bytes: Size = Field(
        default=120 * 1024,
        ge=4096,
        le=16 * 1024 * 1024,
        description="Largest image message. Snapshots over it are re-encoded smaller "
        "(quality, then size), never dropped. The default stays under the 128 KB several "
        "cloud brokers allow.",
    )
    part_bytes: Size = Field(
        default=8 * 1024,
        ge=0,
        le=16 * 1024 * 1024,
        description="The smallest part of an image sent in parts. Parts are sized to take "
        "about 25 ms on the wire at the link's measured speed, and no smaller than this, one "
        "at a time, so that a reading waits about one part's time on a slow link (8 KiB: "
        "65 ms at 1 Mbit/s); on a fast link an image goes whole. 0: always whole.",
    )
    rate: Size = Field(
        default=0,
        ge=0,
        description="Most image bytes a second sent to the broker, on average (a token "
        "bucket); 0: no limit. Telemetry is never limited by it.",
    )
    daily_bytes: Size = Field(
        default=0,
        ge=0,
        description="Most image bytes sent in one UTC day, for a metered 4G plan; then "
        "images wait for the next day (kept, within max_bytes). 0: no cap.",
    )
    commit_interval: Duration = Field(
        default=2.0,
        ge=0,
        le=60,
        description="Every image is acknowledged by the broker or written to disk within "
        "this time of being stored; one the broker takes in time is never written (kept in "
        "RAM meanwhile). A kill -9 or power cut loses at most this much of the images not yet "
        "acknowledged. 0: every image is written at once.",
    )
    ram_bytes: Size = Field(
        default=4 * 1024 * 1024,
        ge=0,
        le=256 * 1024 * 1024,
        description="Most bytes of images kept in RAM within commit_interval; an image that "
        "would exceed it, or one over 64 KiB, is written at once. 0: no images in RAM.",
    )


RUN_DIR = Path("/run/tepi")


class StatusSection(_Model):
    socket: Path | None = Field(
        default=None,
        description="Unix socket of the local status API (tepi status, Prometheus). "
        "Default: /run/tepi/status.sock when /run/tepi exists (the unit's "
        "RuntimeDirectory), else status.sock in gateway.data_dir. Readable by the service's "
        "user and group only.",
    )
    tcp_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Also serve the status API on 127.0.0.1:PORT (loopback only), e.g. for "
        "a local Prometheus. Off by default.",
    )
    enabled: bool = Field(default=True, description="Serve the local status API at all.")


class DashboardSection(_Model):
    """The technician's web console (docs/dashboard.md): off unless ``listen`` is set."""

    listen: str | None = Field(
        default=None,
        description="Serve the web console over HTTPS on HOST:PORT, e.g. 0.0.0.0:8443 (every "
        "interface) or 127.0.0.1:8443 (an SSH tunnel only). Off by default.",
    )
    cert_file: Path | None = Field(
        default=None,
        description="TLS certificate (PEM). Default: a self-signed EC P-256 certificate made "
        "on the first start in gateway.data_dir/dashboard/ and kept; tepi status shows its "
        "SHA-256 fingerprint.",
    )
    key_file: Path | None = Field(default=None, description="The certificate's private key (PEM).")
    users_file: Path | None = Field(
        default=None,
        description="The users and their scrypt password hashes, written by tepi dashboard "
        "passwd. Default: gateway.data_dir/dashboard/users.",
    )
    hosts: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Host names the box is reached by, besides IP addresses, localhost and "
        "its own host name: any other Host header is refused (DNS rebinding).",
    )
    session_ttl: Duration = Field(
        default=8 * 3600.0, ge=60, le=7 * 86400, description="A login lasts this long."
    )
    login_attempts: int = Field(
        default=5,
        ge=1,
        le=100,
        description="Failed logins from one client before it is locked out.",
    )
    lockout: Duration = Field(
        default=300.0,
        ge=1,
        le=86400,
        description="How long a client that failed login_attempts times is refused; the "
        "lockout ends by itself.",
    )

    language: Literal["auto", "en", "vi"] = Field(
        default="auto",
        description="The console's language: en (English), vi (Vietnamese), or auto (the "
        "browser's preference, else English). A user's own choice on the page wins.",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            listen_address(v)
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for h in v:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", h):
                raise ValueError(f"{h!r}: a host name (letters, digits, dots and dashes)")
        return [h.lower() for h in v]

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self

    def dir(self, data_dir: Path) -> Path:
        """Where the generated certificate and the users file live by default."""
        return data_dir / "dashboard"

    def users(self, data_dir: Path) -> Path:
        return self.users_file if self.users_file is not None else self.dir(data_dir) / "users"


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::]:8443`` for IPv6) as (host, port); ValueError with a hint."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: HOST:PORT, e.g. 0.0.0.0:8443 or 127.0.0.1:8443")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(
                f"{text!r}: the host is an IP address (0.0.0.0: every interface) or localhost"
            ) from None
    return host, int(port)


class CommandKey(_Model):
    id: str = Field(
        pattern=r"^[A-Za-z0-9._-]{1,64}$", description="The key's id, named in a signed request."
    )
    public_key: str = Field(
        description="The Ed25519 public key: 32 bytes, base64 (44 characters). Public keys "
        "are not secrets; the private key stays at the IOC."
    )

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, v: str) -> str:
        import base64
        import binascii

        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not base64: an Ed25519 public key is 44 base64 characters") from None
        if len(raw) != 32:
            raise ValueError(f"{len(raw)} bytes; an Ed25519 public key is 32")
        return v


class UpdateSection(_Model):
    """The ``update`` command (issue 19 point 4; docs/update.md)."""

    public_key_file: Path = Field(
        default=Path("/etc/tepi/bundle-signing.pub"),
        description="The Ed25519 public key (PEM) that bundles are signed with; the same "
        "file install.sh and the switcher verify with.",
    )
    ca_file: Path | None = Field(
        default=None,
        description="CA bundle that signs the download server's certificate. Default: the "
        "system's trusted CAs. TLS is always verified.",
    )
    max_bytes: Size = Field(
        default=512 * 1024 * 1024,
        ge=1024 * 1024,
        le=4 * 1024 * 1024 * 1024,
        description="Largest bundle downloaded, e.g. 512MiB.",
    )
    download_timeout: Duration = Field(
        default=900.0, gt=0, le=86400, description="Longest one download attempt may take."
    )
    confirm_timeout: Duration = Field(
        default=180.0,
        ge=10,
        le=3600,
        description="How long the new version has to confirm (uplink connected, the devices "
        "that worked still work) before the switcher goes back to the previous one.",
    )


class CommandsSection(_Model):
    enabled: bool = Field(
        default=True, description="Take commands from the IOC at all (cmd/+ on the broker)."
    )
    policy: dict[str, Literal["signed", "unsigned", "disabled"]] = Field(
        default_factory=dict,
        description="Per command: signed (needs a valid signature), unsigned (a signature, "
        "if any, must verify), or disabled. Unnamed commands keep their default: ping, "
        "health, read, snapshot and buffer.stats unsigned; the others disabled.",
    )
    keys: list[CommandKey] = Field(
        default_factory=list, max_length=16, description="Public keys that may sign requests."
    )
    max_lifetime: Duration = Field(
        default=3600.0,
        gt=0,
        le=7 * 86400,
        description="A request valid longer than this (expires_at - issued_at) is refused.",
    )
    clock_skew: Duration = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="How far in the future issued_at may be (the two clocks disagree).",
    )
    keep_results: int = Field(
        default=1000,
        ge=10,
        le=100_000,
        description="Results of recent requests kept (across restarts) to answer a "
        "redelivered or replayed request again without running it twice.",
    )
    confirm_timeout: Duration = Field(
        default=120.0,
        ge=5,
        le=3600,
        description="A pushed config (config.apply, config.rollback, tepi config apply, the "
        "web console's Apply) must "
        "be confirmed within this: the uplink connected and every device that worked still "
        "working. Otherwise the previous config comes back on its own.",
    )
    update: UpdateSection = Field(
        default_factory=UpdateSection, description="The update command (docs/update.md)."
    )
    allow_unsigned_changes: bool = Field(
        default=False,
        description="Allow policy unsigned for the commands that change the box (write, "
        "restart, reload, config.apply, config.rollback, update). Off: they must be signed.",
    )

    @model_validator(mode="after")
    def _policy(self) -> Self:
        from tepi.gateway.commands import CHANGES, DEFAULT_POLICY

        for name, rule in self.policy.items():
            if name not in DEFAULT_POLICY:
                raise ValueError(f"no command {name!r}; the commands: {', '.join(DEFAULT_POLICY)}")
            if rule == "signed" and not self.keys:
                raise ValueError(f"{name} is signed, but commands.keys has no key to check with")
            if rule == "unsigned" and name in CHANGES and not self.allow_unsigned_changes:
                raise ValueError(
                    f"{name} changes the box: unsigned, anyone who can publish to the broker "
                    "could run it; sign it, or set allow_unsigned_changes: true"
                )
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("commands.keys: each key needs its own id")
        return self


class Config(_Model):
    """The whole config file."""

    def status_socket(self) -> Path:
        """Where the status API listens (and ``tepi status`` looks)."""
        if self.status.socket is not None:
            return self.status.socket
        # The unit's RuntimeDirectory; the agent and ``tepi status`` both look there first.
        base = RUN_DIR if RUN_DIR.is_dir() else self.gateway.data_dir
        return base / "status.sock"

    gateway: GatewaySection = Field(description="This gateway.")
    uplink: UplinkSection = Field(description="The MQTT broker at the IOC.")
    buffer: BufferSection = Field(default_factory=BufferSection, description="Store-and-forward.")
    status: StatusSection = Field(
        default_factory=StatusSection, description="The local status API."
    )
    dashboard: DashboardSection = Field(
        default_factory=DashboardSection,
        description="The technician's web console on the box (docs/dashboard.md); off by default.",
    )
    images: ImagesSection = Field(
        default_factory=ImagesSection,
        description="The image buffer and the images' share of the link (cameras).",
    )
    commands: CommandsSection = Field(
        default_factory=CommandsSection,
        description="Commands from the IOC: which may run, and the keys that sign them.",
    )
    devices: list[DeviceConfig] = Field(default_factory=list, description="Field devices to poll.")
    rules: list[RuleConfig] = Field(
        default_factory=list,
        max_length=1000,
        description="Edge rules and alarms: conditions on the devices' readings and states, "
        "held for a time, with actions (docs/rules.md).",
    )
