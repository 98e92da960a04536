"""Meter-signed OCMF (Iskra WM3M4C): the signing-register driver against the simulated meter
over real Modbus (TCP, and RTU through a socat pair), and whole sessions with
`billing.signer = "meter"` whose records verify with pyocmf."""

from __future__ import annotations

import asyncio
import json
import warnings
from datetime import UTC, datetime

import pytest
from conftest import free_port, station_config
from pyocmf import OCMF
from pyocmf.exceptions import PyOCMFError, SpecWarning
from sessions_helpers import CARD, TARIFFS, body, running

from agent.billing import ocmf
from agent.sessions.model import card_token
from agent.sessions.records import verify_records
from drivers.device import Device
from drivers.profile import load_profile
from drivers.signing import OcmfSigningMeter, SigningMeterError
from drivers.transport import Link, SerialSettings, TcpSettings
from hil.serial_pair import SerialPair
from hil.station import SimStation

ISKRA = "iskra-wm3m4c"
DATASET = '{"FV":"1.0","GI":"evedge","GS":"TEST","PG":"","IS":false,"IT":"NONE","RD":[]}'


def strict_der(text: str) -> str:
    """The record with its signature in strict DER (what pyocmf accepts)."""
    head, payload, sig = text.split("|")
    der = bytes.fromhex(json.loads(sig)["SD"])
    fixed = ocmf.normalize_der_signature(der) or der
    return f'{head}|{payload}|{{"SD":"{fixed.hex().upper()}"}}'


def pyocmf_verifies(text: str, key: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpecWarning)
        try:
            return OCMF.from_string(text, strict=False).verify_signature(key)
        except PyOCMFError:
            return False


def meter_config(tmp_path, rtu_port: str | None = None, billing: str = 'signer = "meter"'):
    """Iskra meter (TCP, or RTU when `rtu_port`) + Phoenix EVSE, billed, meter-signed."""
    meter = dict(name="meter1", profile=ISKRA, unit=33, interval_s=0.1)
    if rtu_port is None:
        meter["port"] = free_port()
    evse = dict(
        name="evse1", profile="phoenix-ev-charge-control", unit=255, port=free_port(),
        interval_s=0.05,
    )  # fmt: skip
    extra = (
        f'[store]\npath = "{tmp_path / "evedge.db"}"\n'
        f'[billing]\ntariff = "{TARIFFS / "simple-energy.json"}"\n'
        f'key_dir = "{tmp_path / "keys"}"\ntimezone = "Europe/Berlin"\n{billing}\n'
        "[sessions]\nend_reading_timeout_s = 2\nrecovery_timeout_s = 3\n"
        f'[auth]\nlocal_list = [{{ id = "{CARD}" }}]\n'
    )
    conn = {"id": 1, "evse": "evse1", "meter": "meter1", "max_current_a": 32}
    return station_config(
        meter, evse, rtu_port=rtu_port, baudrate=115200, timeout_s=0.5, connectors=(conn,),
        extra=extra,
    )  # fmt: skip


async def _driver_round_trip(sim: SimStation, link: Link) -> None:
    dev = Device("meter1", load_profile(ISKRA), link, 33)
    meter = OcmfSigningMeter(dev, poll_s=0.02)
    sim_meter = sim.devices["meter1"].image.extension
    key = await meter.public_key_hex()
    assert await meter.state() == 0
    with pytest.raises(SigningMeterError, match="no transaction open"):
        await meter.transact("E", DATASET, datetime.now(UTC))
    begin = await meter.transact("B", DATASET, datetime.now(UTC))
    assert await meter.state() == 1
    sim.step(0.0)
    end = await meter.transact("L", DATASET, datetime.now(UTC))
    assert await meter.state() == 0
    # Exactly the bytes the simulated meter signed, with its identity and readings filled in.
    assert [begin.split("|")[1], end.split("|")[1]] == sim_meter.signed
    b, e = ocmf.parse(begin), ocmf.parse(end)
    assert b.meter_serial == str(sim.devices["meter1"].image.get("serial_number"))
    assert [b.readings[0].tx, e.readings[0].tx] == ["B", "L"]
    assert b.readings[0].energy_wh == sim.devices["meter1"].meter.import_wh
    assert b.payload["PG"] == "T1" and e.payload["PG"] == "T2"
    for text in (begin, end):
        assert ocmf.verify(text, key).text is text
        assert pyocmf_verifies(strict_der(text), key)
    # A changed byte is caught by both verifiers.
    forged = end.replace('"TX":"L"', '"TX":"E"')
    with pytest.raises(ocmf.SignatureInvalid):
        ocmf.verify(forged, key)
    assert not pyocmf_verifies(strict_der(forged), key)


async def test_driver_signs_begin_and_end_over_tcp(tmp_path):
    cfg = meter_config(tmp_path)
    async with SimStation(cfg, tick_s=None) as sim:
        d = cfg.device_by_name("meter1")
        link = Link(TcpSettings(d.host, d.port), timeout_s=1.0)
        try:
            await _driver_round_trip(sim, link)
        finally:
            link.close()


async def test_driver_signs_begin_and_end_over_rtu(tmp_path):
    async with SerialPair() as (agent_end, sim_end):
        cfg = meter_config(tmp_path, rtu_port=agent_end)
        async with SimStation(cfg, {"rs485": sim_end}, tick_s=None) as sim:
            link = Link(SerialSettings(agent_end, 115200), timeout_s=1.0)
            try:
                await _driver_round_trip(sim, link)
            finally:
                link.close()


async def test_meter_refuses_bad_requests_with_its_status_codes(tmp_path):
    cfg = meter_config(tmp_path)
    async with SimStation(cfg, tick_s=None) as sim:
        d = cfg.device_by_name("meter1")
        link = Link(TcpSettings(d.host, d.port), timeout_s=1.0)
        spec = load_profile(ISKRA).signing
        try:
            # A command before the clock was set: 128, as the manual says.
            await link.write("holding", spec.command, [ord("B") << 8], 33)
            assert (await link.read("holding", spec.status, 1, 33))[0] == 128
            meter = OcmfSigningMeter(Device("meter1", load_profile(ISKRA), link, 33))
            with pytest.raises(SigningMeterError, match="invalid message format"):
                await meter.transact("B", "{not json", datetime.now(UTC))
            with pytest.raises(SigningMeterError, match="1024"):
                await meter.transact("B", "x" * 1025, datetime.now(UTC))
            # Reads over 120 registers are refused, like the real meter.
            from drivers.transport import ModbusFailure

            with pytest.raises(ModbusFailure, match="exception 03"):
                await link.read("holding", spec.output, 121, 33)
            assert sim.devices["meter1"].image.extension.signed == []
        finally:
            link.close()


async def test_firmware_der_quirk_is_passed_on_and_verifies_after_normalizing(tmp_path):
    cfg = meter_config(tmp_path)
    async with SimStation(cfg, tick_s=None) as sim:
        sim.devices["meter1"].image.extension.der = "padded"
        d = cfg.device_by_name("meter1")
        link = Link(TcpSettings(d.host, d.port), timeout_s=1.0)
        try:
            meter = OcmfSigningMeter(Device("meter1", load_profile(ISKRA), link, 33))
            key = await meter.public_key_hex()
            text = await meter.transact("B", DATASET, datetime.now(UTC))
        finally:
            link.close()
    der = bytes.fromhex(json.loads(text.split("|")[2])["SD"])
    strict = ocmf.normalize_der_signature(der)
    assert strict is not None and len(strict) < len(der)  # r or s kept a leading zero byte
    result = ocmf.passthrough_meter_record(text, key)
    assert result.der_normalized and result.text is text
    assert not pyocmf_verifies(text, key)  # strict DER verifiers refuse the meter's bytes
    assert pyocmf_verifies(strict_der(text), key)


async def _meter_signed_session(rig) -> dict:
    await rig.card_charging()
    await asyncio.sleep(1.5)
    assert await rig.engine.authorize(1, card_token(CARD)) == "stopped"
    rec = await rig.record()
    return body(rec)


@pytest.mark.parametrize("link", ["tcp", "rtu"])
async def test_session_with_meter_signer_gives_records_pyocmf_verifies(tmp_path, link):
    pair = SerialPair() if link == "rtu" else None
    ports = await pair.__aenter__() if pair else None
    try:
        cfg = meter_config(tmp_path, rtu_port=ports[0] if ports else None)
        sim = SimStation(cfg, {"rs485": ports[1]} if ports else None, tick_s=0.1)
        await sim.start()
        try:
            async with running(cfg, sim=sim) as rig:
                assert rig.engine.signer_kind(1) == "meter"
                b = await _meter_signed_session(rig)
                signed = list(sim.devices["meter1"].image.extension.signed)
                with rig.store() as st:
                    report = verify_records(st, None)
        finally:
            await sim.stop()
    finally:
        if pair:
            await pair.__aexit__(None, None, None)
    sig = b["ocmf"]
    assert sig["signer"] == "meter" and "end_public_key" not in sig
    # Passed through byte for byte: the stored payloads are the ones the meter signed.
    assert [sig["begin"].split("|")[1], sig["end"].split("|")[1]] == signed
    begin, end = ocmf.parse(sig["begin"]), ocmf.parse(sig["end"])
    assert end.readings[-1].tx == "L"  # stopped by card: the meter signed the reason
    # Billed energy is the signed register difference.
    assert b["meter"]["start_wh"] == begin.readings[0].energy_wh
    assert b["meter"]["end_wh"] == end.readings[-1].energy_wh
    assert b["energy_wh"] == b["meter"]["end_wh"] - b["meter"]["start_wh"] > 0
    assert report.problems == [] and report.signatures == 2
    key = sig["public_key"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpecWarning)
        pb = OCMF.from_string(strict_der(sig["begin"]), strict=False)
        pe = OCMF.from_string(strict_der(sig["end"]), strict=False)
    assert pb.verify_signature(key) and pe.verify_signature(key)
    assert pb.check_eichrecht(pe, errors_only=True) == []


async def test_signer_meter_is_refused_for_a_meter_that_cannot_sign(tmp_path):
    from sessions_helpers import billed_config

    from agent.runtime import Agent

    cfg = billed_config(tmp_path, billing='signer = "meter"')
    with pytest.raises(ValueError, match=r"eastron-sdm630.*no \[signing\] registers"):
        Agent(cfg)
