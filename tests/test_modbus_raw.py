"""`evedge modbus raw` like mbpoll, against the simulator on loopback: decoding in the four
byte orders, the profile's names and error table, `--watch` repeating; and plain help."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from test_simctl import run, sim, sim_config  # noqa: F401  (fixtures)

from agent.cli.modbus_raw import decode_words


def words_of(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


@pytest.mark.parametrize(
    ("order", "arrange"),
    [
        ("abcd", lambda b: b),
        ("cdab", lambda b: b[2:] + b[:2]),
        ("badc", lambda b: bytes([b[1], b[0], b[3], b[2]])),
        ("dcba", lambda b: b[::-1]),
    ],
)
def test_each_byte_order_decodes_what_was_encoded(order: str, arrange) -> None:
    for type_, fmt, value in (("f32", ">f", 230.5), ("s32", ">i", -123456), ("u32", ">I", 70000)):
        assert decode_words(words_of(arrange(struct.pack(fmt, value))), type_, order) == [value]
    swapped = order in ("badc", "dcba")
    assert decode_words([0xFFFE], "s16", order) == [-257 if swapped else -2]
    assert decode_words([0x0102, 0x0304], "u16", order) == (
        [0x0201, 0x0403] if swapped else [0x0102, 0x0304]
    )


def config_ports(config: Path) -> tuple[int, int]:
    """The meter's and the EVSE's Modbus TCP ports in the sim config."""
    ports = [int(line.split("=")[1]) for line in config.read_text().splitlines()
             if line.startswith("port = ")]  # fmt: skip
    return ports[0], ports[1]


def raw(*args: str) -> list[dict]:
    res = run("modbus", "raw", *args, "--json")
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_raw_reads_the_simulated_meter_and_names_evse_codes(sim: Path) -> None:  # noqa: F811
    meter, evse = config_ports(sim)
    volts = raw("--tcp", f"127.0.0.1:{meter}", "--fc", "4", "--address", "0", "--count", "3",
                "--type", "f32")[0]  # fmt: skip
    assert [v["address"] for v in volts["values"]] == [0, 2, 4]
    assert all(200 < v["value"] < 260 for v in volts["values"]), volts
    swapped = raw("--tcp", f"127.0.0.1:{meter}", "--fc", "4", "--count", "3", "--type", "f32",
                  "--order", "cdab")[0]  # fmt: skip
    assert not any(200 < v["value"] < 260 for v in swapped["values"]), swapped  # words swapped

    assert run("simctl", "inject", "evse_error_code", "--connector", "1", "--set", "code=7",
               "--config", str(sim)).returncode == 0  # fmt: skip
    polls = raw("--tcp", f"127.0.0.1:{evse}", "--unit", "255", "--fc", "4", "--address", "107",
                "--profile", "phoenix-ev-charge-control",
                "--watch", "0.2", "--polls", "2")  # fmt: skip
    assert len(polls) == 2
    code = polls[1]["values"][0]
    assert code["quantity"] == "evse_error_code" and code["value"] == 7
    assert code["meaning"] == "7 (unlocking in progress)"

    # `modbus read` applies the same table, and repeats with --watch.
    res = run("modbus", "read", "--profile", "phoenix-ev-charge-control",
              "--tcp", f"127.0.0.1:{evse}", "--unit", "255")  # fmt: skip
    assert "7 (unlocking in progress)" in " ".join(res.stdout.replace("│", " ").split())
    res = run("modbus", "read", "--profile", "eastron-sdm630", "--tcp", f"127.0.0.1:{meter}",
              "--watch", "0.2", "--polls", "2", "--json")  # fmt: skip
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.returncode == 0 and len(docs) == 2, res.stderr
    assert all(200 < d["values"]["voltage_l1"]["value"] < 260 for d in docs)


def test_raw_refuses_bad_options_with_what_is_allowed() -> None:
    for args, said in (
        (["--fc", "6"], "--fc must be 3 (holding) or 4 (input registers)"),
        (["--type", "f64"], "--type must be one of u16, s16, u32, s32, f32"),
        (["--order", "abdc"], "--order must be abcd, cdab, badc or dcba"),
        (["--address", "65535", "--count", "2", "--type", "f32"], "passes register 65535"),
    ):
        res = run("modbus", "raw", "--tcp", "127.0.0.1:1", *args)
        assert res.returncode == 2 and said in " ".join(res.stderr.split()), res.stderr


def test_help_names_values_not_python_types() -> None:
    inject = run("simctl", "inject", "--help").stdout
    assert "--set TEXT" in inject and "--connector N" in inject
    for cmd in (["status"], ["simctl", "inject"], ["modbus", "raw"], ["demo"]):
        text = run(*cmd, "--help").stdout
        assert (
            "<bool>" not in text
            and "list[str]" not in text
            and "<str>" not in text.split("Options:")[1]
        ), text
