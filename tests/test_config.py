"""Station config: the shipped examples load; every kind of mistake gets a precise error."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]

BASE = """
[station]
id = "CP-0001"
[[bus]]
name = "rs485-0"
kind = "rtu"
port = "/dev/ttyUSB0"
baudrate = 9600
[[bus]]
name = "lan"
kind = "tcp"
[[device]]
name = "meter1"
profile = "eastron-sdm630"
bus = "rs485-0"
unit = 1
[[device]]
name = "evse1"
profile = "phoenix-ev-charge-control"
bus = "lan"
host = "127.0.0.1"
port = 1502
unit = 255
[[connector]]
id = 1
evse = "evse1"
meter = "meter1"
"""


@pytest.mark.parametrize("name", ["demo.toml", "station.example.toml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(ROOT / "config" / name)
    assert cfg.connector and cfg.device


def test_base_config_is_valid() -> None:
    cfg = parse_config(BASE)
    assert cfg.bus_by_name("rs485-0").baudrate == 9600
    assert cfg.device_by_name("evse1").unit == 255


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "station.toml")
    return str(e.value).splitlines()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("unit = 1\n", "unit = 300\n"), "station.toml: device[0].unit: "),
        (("unit = 1\n", "unit = 0\n"), "device[0].unit: must be 1..247 on an RTU bus, got 0"),
        (('bus = "rs485-0"\n', 'bus = "rs485-9"\n'), "device[0].bus: no bus named 'rs485-9'"),
        (('profile = "eastron-sdm630"', 'profile = "no-such-meter"'), "device[0].profile: unknown"),
        (('kind = "tcp"', 'kind = "udp"'), "bus[1].kind:"),
        (('port = "/dev/ttyUSB0"\n', ""), "bus[0].port: required for an rtu bus"),
        (('host = "127.0.0.1"\n', ""), "device[1].host: required for a device on a tcp bus"),
        (
            ('meter = "meter1"', 'meter = "evse1"'),
            "connector[0].meter: evse1 is an EVSE controller, not a meter",
        ),
        (
            ("[[connector]]\nid = 1", "[[connector]]\nid = 1\nwires = 4"),
            "connector[0].wires: unknown key",
        ),
        (('id = "CP-0001"', 'id = "CP 0001/x"'), "station.id:"),
        (("baudrate = 9600", "baudrate = -1"), "bus[0].baudrate:"),
    ],
)
def test_mistakes_are_named(change: tuple[str, str], expected: str) -> None:
    text = BASE.replace(*change, 1)
    assert text != BASE
    assert any(expected in line for line in problems(text)), problems(text)


def test_unknown_section_and_bad_toml() -> None:
    assert any("mqqt: unknown key" in p for p in problems(BASE + "\n[mqqt]\nhost = 'x'\n"))
    assert any("not valid TOML" in p for p in problems(BASE + "\n[[device]\n"))


def test_all_problems_are_reported_at_once() -> None:
    text = BASE.replace("unit = 1\n", "unit = 300\n").replace(
        "[[connector]]\nid = 1", "[[connector]]\nid = 0"
    )
    found = problems(text)
    assert len(found) >= 2


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_config_check_cli(tmp_path: Path) -> None:
    good = tmp_path / "station.toml"
    good.write_text(BASE)
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", str(good), "--json"])
    assert ok.exit_code == 0, ok.output
    assert '"ok": true' in ok.output
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE.replace("unit = 1\n", "unit = 0\n"))
    res = runner.invoke(app, ["config", "check", str(bad)])
    assert res.exit_code == 2
    assert "bad.toml: device[0].unit: must be 1..247 on an RTU bus, got 0" in res.output.replace(
        "\n", ""
    )
