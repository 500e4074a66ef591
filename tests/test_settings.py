"""Site configuration: the example loads, mistakes are named by key path, scanner URIs share the validation."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.settings import (
    ReplayScanner,
    SerialScanner,
    config_hash,
    load_settings,
    parse_settings,
    read_secret,
)
from drivers.uri import parse_scanner_uri
from tests.conftest import EXAMPLE_CONFIG, run_cli

SITE = {"site": {"device_id": "dock-1", "facility": "NDC-X"}}


def test_example_config_loads_and_shows_every_key() -> None:
    from agent import settings as mod

    s = load_settings(EXAMPLE_CONFIG)
    assert s.site.device_id == "dock-example-01"
    serial = s.scanners[0]
    assert isinstance(serial, SerialScanner) and serial.feedback.good == "06"
    text = EXAMPLE_CONFIG.read_text()
    keys = set(re.findall(r"^#?\s*(\w+)\s*=", text, re.M)) | set(re.findall(r"^\[+(?:\w+\.)?(\w+)\]", text, re.M))
    for model in (mod.Feedback, mod.SerialScanner, mod.ReplayScanner, mod.SiteSection, mod.StoreSection,
                  mod.LogSection, mod.SyncSection, mod.WorkflowSection, mod.HttpSection, mod.HidScanner, mod.CameraScanner):
        missing = set(model.model_fields) - keys
        assert not missing, f"{model.__name__}: {sorted(missing)} not shown in {EXAMPLE_CONFIG.name}"


def test_every_field_has_a_description() -> None:
    from agent import settings as mod

    for model in (mod.Feedback, mod.SerialScanner, mod.ReplayScanner, mod.SiteSection, mod.StoreSection,
                  mod.LogSection, mod.SyncSection, mod.WorkflowSection, mod.HttpSection, mod.HidScanner, mod.CameraScanner):
        for name, field in model.model_fields.items():
            if name != "type":
                assert field.description, f"{model.__name__}.{name} has no description"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**SITE, "sites": {}}, "sites: unknown key"),
        ({"site": {"device_id": "dock-1", "facility": "NDC-X", "faclity": "x"}}, "site.faclity: unknown key"),
        ({"site": {"facility": "NDC-X"}}, "site.device_id: required key is missing"),
        ({**SITE, "store": {"floor_free_mb": -1}}, "store.floor_free_mb"),
        ({**SITE, "store": {"warn_free_mb": 10, "floor_free_mb": 20}}, "warn_free_mb (10.0) must be at least"),
        ({**SITE, "scanners": [{"type": "serial", "name": "a", "port": "/dev/x", "baud": 12}]},
         "scanners[0].baud"),
        ({**SITE, "scanners": [{"type": "serial", "name": "a", "port": "/dev/x", "colour": "red"}]},
         "scanners[0].colour: unknown key"),
        ({**SITE, "scanners": [{"type": "serial", "name": "a", "port": "/dev/x", "feedback": {"good": "zz"}}]},
         "scanners[0].feedback.good"),
        ({**SITE, "scanners": [{"type": "serial", "name": "a", "port": "/dev/x", "terminator": "0d0d0d"}]},
         "terminator must be one byte"),
        ({**SITE, "scanners": [{"type": "laser", "name": "a"}]}, "scanners[0]"),
        ({**SITE, "scanners": [{"type": "replay", "name": "a", "path": "x"},
                               {"type": "replay", "name": "a", "path": "y"}]}, "two scanners are named 'a'"),
        ({"site": {"device_id": "has space", "facility": "NDC-X"}}, "site.device_id"),
        ({**SITE, "sync": {"broker": "mqtt://10.0.0.1:1883"}}, "use mqtts:// or set allow_plaintext = true"),
        ({**SITE, "sync": {"broker": "ws://x:1"}}, "sync.broker"),
        ({**SITE, "sync": {"client_key_file": "/k"}}, "client_key_file is set without client_cert_file"),
    ],
)
def test_mistakes_are_named_by_key_path(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(data, "site.toml")
    assert expected in str(err.value)
    assert str(err.value).startswith("site.toml: invalid configuration")


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[site\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_settings(tmp_path / "missing.toml")


def test_config_hash_is_stable_and_changes_with_content() -> None:
    a = parse_settings(SITE)
    b = parse_settings({"site": dict(SITE["site"])})
    c = parse_settings({"site": {"device_id": "dock-2", "facility": "NDC-X"}})
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_secrets_come_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mqtt-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_secret("mqtt-password") == "s3cret"
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret("missing")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        read_secret("mqtt-password")


def test_scanner_uris() -> None:
    s = parse_scanner_uri("serial:///dev/ttyACM0?baud=115200&good=06&bad=15&attention=07", 2)
    assert isinstance(s, SerialScanner)
    assert (s.port, s.baud, s.name) == ("/dev/ttyACM0", 115200, "serial2")
    assert (s.feedback.good, s.feedback.bad, s.feedback.attention) == ("06", "15", "07")
    r = parse_scanner_uri("replay:///tmp/shift.txt?speed=0")
    assert isinstance(r, ReplayScanner) and r.path == "/tmp/shift.txt" and r.speed == 0
    assert parse_scanner_uri("replay:-").path == "-"
    for uri, message in [
        ("usb:///dev/x", "unknown scheme 'usb'"),
        ("serial://", "no device or file path"),
        ("serial:///dev/x?baud=fast", "baud must be a number"),
        ("serial:///dev/x?good=0g", "feedback.good"),
        ("serial:///dev/x?colour=red", "colour: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_scanner_uri(uri)


def test_check_config_cli(tmp_path: Path) -> None:
    ok = run_cli("check-config", "--config", str(EXAMPLE_CONFIG))
    assert ok.returncode == 0 and "ok (device dock-example-01" in ok.stdout
    bad = tmp_path / "site.toml"
    data = tomllib.loads(EXAMPLE_CONFIG.read_text())
    bad.write_text(EXAMPLE_CONFIG.read_text().replace("[log]", "[logging]"))
    assert "log" in data
    res = run_cli("check-config", "--config", str(bad))
    assert res.returncode == 1 and "logging: unknown key" in res.stderr
