"""The agent's configuration: ``agent.toml``, validated when the agent starts.

The keys of DESIGN.md ("The agent's config and local API") are a published contract:
provisioning tools write them. Every error names the file and the key. Secrets (the broker
password, the API token) stay in their own files, which the config only names; their contents
are read when needed and never logged.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edgeml.toolkit.errors import ConfigError
from edgeml.toolkit.protocol import DEVICE_ID_PATTERN, BrokerEndpoint

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_API = "127.0.0.1:8765"


@dataclass(frozen=True)
class BrokerSettings(BrokerEndpoint):
    """Where the broker is and how to log in (``[broker]``)."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = 30

    def password(self) -> str | None:
        """The broker password, read from its file (first line), or None."""
        if self.password_file is None:
            return None
        return self.password_file.read_text(encoding="utf-8").splitlines()[0].strip()


@dataclass(frozen=True)
class ApiSettings:
    """Where the local scoring API listens (``[api]``)."""

    listen: str = DEFAULT_API
    token_file: Path | None = None
    max_body_bytes: int = 8 * 1024 * 1024

    @property
    def unix_socket(self) -> Path | None:
        return Path(self.listen[5:]) if self.listen.startswith("unix:") else None

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def loopback(self) -> bool:
        if self.unix_socket is not None:
            return True
        host = self.host_port[0]
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def token(self) -> str | None:
        if self.token_file is None:
            return None
        return self.token_file.read_text(encoding="utf-8").strip() or None


@dataclass(frozen=True)
class TelemetrySettings:
    """How the agent summarises and buffers telemetry (``[telemetry]``)."""

    window_s: float = 60.0
    max_buffer_mb: float = 50.0
    max_windows: int = 100_000
    max_in_flight: int = 20
    publish_batch: int = 100


@dataclass(frozen=True)
class InstallSettings:
    """How the agent receives bundles (``[install]``)."""

    reserve_mb: float = 16.0
    """Free space a transfer leaves on the state folder's disk beyond the bundle's bytes: an
    install never fills the disk. A device with less room than that refuses every install
    (DiskFullError names free and needed); lower it there."""

    @property
    def reserve_bytes(self) -> int:
        return int(self.reserve_mb * 1024 * 1024)


@dataclass(frozen=True)
class AgentConfig:
    """The whole ``agent.toml``."""

    source: Path
    device_id: str
    profile: str
    state_dir: Path
    trust: Path
    tags: tuple[str, ...] = ()
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    install: InstallSettings = field(default_factory=InstallSettings)

    @property
    def outbox_path(self) -> Path:
        return self.state_dir / "outbox.db"


_TOP = (
    "device_id",
    "profile",
    "tags",
    "state_dir",
    "trust",
    "broker",
    "api",
    "telemetry",
    "install",
)
_TABLES: dict[str, tuple[str, ...]] = {
    "broker": (
        "url",
        "username",
        "password_file",
        "ca_file",
        "cert_file",
        "key_file",
        "keepalive_s",
    ),
    "api": ("listen", "token_file", "max_body_bytes"),
    "telemetry": ("window_s", "max_buffer_mb", "max_windows", "max_in_flight", "publish_batch"),
    "install": ("reserve_mb",),
}


class _Reader:
    """Typed access to the TOML document, naming the file and the key in every error."""

    def __init__(self, source: Path, document: dict[str, Any]) -> None:
        self.source = source
        self.document = document

    def fail(self, key: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.source}: key {key!r} must be {expected}, got {value!r}")

    def table(self, name: str) -> dict[str, Any]:
        value = self.document.get(name, {})
        if not isinstance(value, dict):
            raise self.fail(name, "a table", value)
        for key in value:
            if key not in _TABLES[name]:
                raise ConfigError(
                    f"{self.source}: unknown key {name}.{key!r}; known: {', '.join(_TABLES[name])}"
                )
        return value

    def string(self, table: dict[str, Any], key: str, name: str, default: str | None = None) -> str:
        value = table.get(key, default)
        if not isinstance(value, str) or not value:
            raise self.fail(name, "a non-empty string", value)
        return value

    def path(self, table: dict[str, Any], key: str, name: str, *, must_exist: bool) -> Path | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(name, "a path", value)
        path = Path(value)
        if not path.is_absolute():
            path = (self.source.parent / path).resolve()
        if must_exist and not path.exists():
            raise ConfigError(f"{self.source}: key {name!r}: {path} does not exist")
        return path

    def number(
        self, table: dict[str, Any], key: str, name: str, default: float, *, integer: bool = False
    ) -> Any:
        value = table.get(key, default)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
            raise self.fail(name, "a positive " + ("integer" if integer else "number"), value)
        return value


def load_config(path: Path | str) -> AgentConfig:
    """Read and validate ``agent.toml``.

    Raises:
        ConfigError: the file is missing or not TOML, a key is unknown, missing, of the wrong
            type or out of range, or a file it names does not exist; the message names the key.
    """
    source = Path(path)
    try:
        document = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"agent config {source} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    reader = _Reader(source, document)
    unknown = [k for k in document if k not in _TOP]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_TOP)}"
        )
    for required in ("device_id", "profile", "state_dir", "trust"):
        if required not in document:
            raise ConfigError(f"{source}: required key {required!r} is missing")
    device_id = reader.string(document, "device_id", "device_id")
    if not DEVICE_ID_PATTERN.match(device_id):
        raise reader.fail("device_id", f"made of {DEVICE_ID_PATTERN.pattern}", device_id)
    tags = document.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise reader.fail("tags", "a list of non-empty strings", tags)
    state_dir = reader.path(document, "state_dir", "state_dir", must_exist=False)
    trust = reader.path(document, "trust", "trust", must_exist=True)
    assert state_dir is not None and trust is not None

    b = reader.table("broker")
    url = reader.string(b, "url", "broker.url", "mqtt://127.0.0.1:1883")
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise reader.fail("broker.url", "mqtt://HOST:PORT or mqtts://HOST:PORT", url)
    if parsed.password or parsed.username:
        raise ConfigError(
            f"{source}: key 'broker.url' must not hold credentials; use username and password_file"
        )
    password_file = reader.path(b, "password_file", "broker.password_file", must_exist=True)
    if password_file is not None and password_file.stat().st_mode & stat.S_IROTH:
        raise ConfigError(
            f"{source}: key 'broker.password_file': {password_file} is readable by others; "
            "chmod 600 it"
        )
    broker = BrokerSettings(
        url=url,
        username=None
        if b.get("username") is None
        else reader.string(b, "username", "broker.username"),
        password_file=password_file,
        ca_file=reader.path(b, "ca_file", "broker.ca_file", must_exist=True),
        cert_file=reader.path(b, "cert_file", "broker.cert_file", must_exist=True),
        key_file=reader.path(b, "key_file", "broker.key_file", must_exist=True),
        keepalive_s=reader.number(b, "keepalive_s", "broker.keepalive_s", 30, integer=True),
    )

    a = reader.table("api")
    listen = reader.string(a, "listen", "api.listen", DEFAULT_API)
    api = ApiSettings(
        listen=listen,
        token_file=reader.path(a, "token_file", "api.token_file", must_exist=True),
        max_body_bytes=reader.number(
            a, "max_body_bytes", "api.max_body_bytes", 8 * 1024 * 1024, integer=True
        ),
    )
    if api.unix_socket is None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise reader.fail("api.listen", "HOST:PORT or unix:/path", listen)
    if not api.loopback and api.token_file is None:
        raise ConfigError(
            f"{source}: key 'api.listen' = {listen!r} is not loopback: set api.token_file, "
            "the API refuses to serve other hosts without a token"
        )

    t = reader.table("telemetry")
    telemetry = TelemetrySettings(
        window_s=float(reader.number(t, "window_s", "telemetry.window_s", 60.0)),
        max_buffer_mb=float(reader.number(t, "max_buffer_mb", "telemetry.max_buffer_mb", 50.0)),
        max_windows=reader.number(t, "max_windows", "telemetry.max_windows", 100_000, integer=True),
        max_in_flight=reader.number(
            t, "max_in_flight", "telemetry.max_in_flight", 20, integer=True
        ),
        publish_batch=reader.number(
            t, "publish_batch", "telemetry.publish_batch", 100, integer=True
        ),
    )
    if telemetry.max_in_flight > 1000:
        raise reader.fail(
            "telemetry.max_in_flight",
            "at most 1000 (paho's message ids are 16-bit)",
            telemetry.max_in_flight,
        )
    i = reader.table("install")
    reserve_mb = float(reader.number(i, "reserve_mb", "install.reserve_mb", 16.0))
    return AgentConfig(
        source=source,
        device_id=device_id,
        profile=reader.string(document, "profile", "profile"),
        state_dir=state_dir,
        trust=trust,
        tags=tuple(tags),
        broker=broker,
        api=api,
        telemetry=telemetry,
        install=InstallSettings(reserve_mb=reserve_mb),
    )


def ensure_state_dir(config: AgentConfig) -> None:
    """Create the state folder (0700) if missing."""
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(config.state_dir, 0o700)
