"""agent.toml: the contract's keys load; every bad value names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeml.agent.config import InstallSettings, load_config
from edgeml.toolkit.errors import ConfigError


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "trust").mkdir(exist_ok=True)
    secret = tmp_path / "broker.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    path = tmp_path / "agent.toml"
    path.write_text(body)
    return path


CONTRACT = """
device_id = "pi-0001"
profile   = "raspberry-pi-4"
tags      = ["canary", "plant-3"]
state_dir = "state"
trust     = "trust"

[broker]
url      = "mqtt://127.0.0.1:1883"
username = "pi-0001"
password_file = "broker.secret"

[api]
listen = "127.0.0.1:8765"

[telemetry]
window_s = 60
max_buffer_mb = 50

[install]
reserve_mb = 4
"""


def test_the_documented_example_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CONTRACT))
    assert config.device_id == "pi-0001" and config.tags == ("canary", "plant-3")
    assert config.state_dir == (tmp_path / "state").resolve()
    assert config.broker.port == 1883 and config.broker.password() == "s3cret"
    assert config.api.loopback and config.api.host_port == ("127.0.0.1", 8765)
    assert config.telemetry.window_s == 60.0
    assert config.install.reserve_bytes == 4 * 1024 * 1024
    assert load_config(write(tmp_path, CONTRACT.replace("reserve_mb = 4", ""))).install == (
        InstallSettings(reserve_mb=16.0)
    ), "16 MiB unless set"


def test_the_example_in_the_docs_loads(tmp_path: Path) -> None:
    """docs/examples/agent.toml, its /etc and /var paths moved under a temporary folder: every
    key it shows is one the agent takes, with a valid value."""
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "agent.toml"
    etc = tmp_path / "etc"
    (etc / "trust").mkdir(parents=True)
    secret = etc / "broker.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    text = example.read_text().replace("/etc/edgeml", str(etc))
    config_path = tmp_path / "agent.toml"
    config_path.write_text(text.replace("/var/lib/edgeml", str(tmp_path / "state")))
    config = load_config(config_path)
    assert config.device_id == "pi-0001" and config.install == InstallSettings()
    assert config.telemetry.max_in_flight == 20 and config.api.max_body_bytes == 8 * 1024 * 1024


@pytest.mark.parametrize(
    "change, key",
    [
        (('device_id = "pi-0001"', 'device_id = "pi 0001/x"'), "device_id"),
        (('tags      = ["canary", "plant-3"]', 'tags = "canary"'), "tags"),
        (('url      = "mqtt://127.0.0.1:1883"', 'url = "http://127.0.0.1"'), "broker.url"),
        (('url      = "mqtt://127.0.0.1:1883"', 'url = "mqtt://u:p@127.0.0.1:1883"'), "broker.url"),
        (("window_s = 60", "window_s = -5"), "telemetry.window_s"),
        (("window_s = 60", "window_s = true"), "telemetry.window_s"),
        (("reserve_mb = 4", "reserve_mb = 0"), "install.reserve_mb"),
        (("reserve_mb = 4", "reserve_mb = 4\nreserve = 1"), "reserve"),
        (("max_buffer_mb = 50", "max_buffer_mb = 50\nmax_buffr = 1"), "max_buffr"),
        (('listen = "127.0.0.1:8765"', 'listen = "0.0.0.0:8765"'), "api.listen"),
        (('listen = "127.0.0.1:8765"', 'listen = "nowhere"'), "api.listen"),
        (
            ('password_file = "broker.secret"', 'password_file = "missing.secret"'),
            "broker.password_file",
        ),
        (('profile   = "raspberry-pi-4"', 'profile = "raspberry-pi-4"\ncolour = "red"'), "colour"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, change: tuple[str, str], key: str) -> None:
    body = CONTRACT.replace(*change)
    assert body != CONTRACT
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as caught:
        load_config(write(tmp_path, body))
    assert "agent.toml" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_missing_keys_and_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="required key 'trust'"):
        load_config(write(tmp_path, CONTRACT.replace('trust     = "trust"\n', "")))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "device_id = "))


def test_a_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, CONTRACT)
    (tmp_path / "broker.secret").chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_config(path)


def test_non_loopback_api_needs_a_token_and_unix_sockets_are_local(tmp_path: Path) -> None:
    token = tmp_path / "api.token"
    token.write_text("t0ken")
    body = CONTRACT.replace(
        'listen = "127.0.0.1:8765"', f'listen = "0.0.0.0:8765"\ntoken_file = "{token}"'
    )
    config = load_config(write(tmp_path, body))
    assert not config.api.loopback and config.api.token() == "t0ken"
    body = CONTRACT.replace('listen = "127.0.0.1:8765"', f'listen = "unix:{tmp_path}/agent.sock"')
    assert load_config(write(tmp_path, body)).api.unix_socket == tmp_path / "agent.sock"
