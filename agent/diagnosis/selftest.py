"""`evedge diagnose`: an active self-test of the station, with guidance for what fails.

It does not wait for faults to develop: it reads every configured device a few times and
checks what one look can tell — does each device answer (and how: silence, corrupt
frames, refusals), is the whole bus down, is P ≈ Σ V·I·PF, does the energy register only
count up, is the clock synchronized, is there disk space, is the cloud reachable. Each
problem comes with the technician steps of the rule that covers it in the rule files.

Run it while the service is stopped, or on a device the service does not poll: a serial
line carries one master at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from agent.bus import EventBus
from agent.config import StationConfig
from agent.diagnosis.facts import StationFacts, disk_free
from agent.diagnosis.rules import Rule, load_rules
from agent.diagnosis.service import diagnosis_config, reachable
from agent.station import build_station
from drivers.device import CycleResult, Device

PLAUSIBILITY_REL = 0.10  # P may differ from Σ V·I·PF by 10 % ...
PLAUSIBILITY_ABS_W = 50.0  # ... plus 50 W (meter class, rounding of the registers)
PLAUSIBILITY_MIN_VA = 200.0  # below this the comparison says nothing


@dataclass
class Finding:
    """One self-test result; `ok` False is a problem (exit 1)."""

    check: str  # bus_scan | bus | plausibility | energy | clock | disk | cloud
    target: str  # device, bus, or "station"
    ok: bool
    message: str
    rule: str | None = None  # the rule whose guidance applies
    steps: dict[str, list[str]] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _guided(rules: Mapping[str, Rule], rule: str, labels: Mapping[str, str], **kw: Any) -> Finding:
    r = rules.get(rule)
    return Finding(rule=rule, steps=r.steps(labels) if r else {}, **kw)


@dataclass
class _Reads:
    device: Device
    cycles: list[CycleResult] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)


async def _read(dev: Device, reads: int, gap_s: float) -> _Reads:
    out = _Reads(dev)
    ident = await dev.read_identity()
    if ident.aborted:
        out.cycles.append(ident)
        return out
    for i in range(reads):
        if i:
            await asyncio.sleep(gap_s)
        t0 = time.perf_counter()
        result = await dev.read_cycle()
        out.latency_ms.append(round((time.perf_counter() - t0) * 1000, 1))
        out.cycles.append(result)
        if result.aborted:
            break
    return out


def _scan_finding(cfg: StationConfig, rules: Mapping[str, Rule], r: _Reads) -> Finding:
    dev = r.device
    d = cfg.device_by_name(dev.name)
    labels = {"device": dev.name, "bus": d.bus, "kind": dev.profile.kind}
    failures = [f for c in r.cycles for f in c.failures]
    kinds = {f.kind for f in failures}
    codes = {f.code for f in failures if f.kind == "exception"}
    evidence = {
        "profile": dev.profile.name,
        "unit": dev.unit,
        "link": dev.link.name,
        "latency_ms": r.latency_ms,
        "failures": [str(f) for f in failures[:5]],
    }
    if r.cycles and not r.cycles[-1].aborted and not failures:
        return Finding("bus_scan", dev.name, True, "answers, every value read", evidence=evidence)
    if "bad_frame" in kinds:
        msg = "answers arrive corrupted (CRC / framing / garbage)"
        return _guided(
            rules,
            "frame_errors",
            labels,
            check="bus_scan",
            target=dev.name,
            ok=False,
            message=msg,
            evidence=evidence,
        )
    if codes & {1, 2}:
        msg = f"refuses requests with exception {', '.join(f'{c:02d}' for c in sorted(codes))}"
        return _guided(
            rules,
            "modbus_exception",
            labels,
            check="bus_scan",
            target=dev.name,
            ok=False,
            message=msg,
            evidence=evidence,
        )
    msg = "does not answer" if r.cycles and r.cycles[-1].aborted else "answers only in part"
    return _guided(
        rules,
        "device_not_answering",
        labels,
        check="bus_scan",
        target=dev.name,
        ok=False,
        message=msg,
        evidence=evidence,
    )


def _plausibility(r: _Reads) -> Finding | None:
    """P ≈ Σ V·I·PF on the last good cycle of a device that measures all three."""
    good = [c for c in r.cycles if not c.aborted and c.values]
    if not good:
        return None
    v = good[-1].values
    need = [f"voltage_l{k}" for k in (1, 2, 3)] + [f"current_l{k}" for k in (1, 2, 3)]
    if not all(isinstance(v.get(q), int | float) for q in [*need, "power_w"]):
        return None
    apparent = sum(v[f"voltage_l{k}"] * v[f"current_l{k}"] for k in (1, 2, 3))  # type: ignore[operator]
    pf = v.get("power_factor")
    expected = apparent * (abs(pf) if isinstance(pf, int | float) and pf else 1.0)
    power = float(v["power_w"])  # type: ignore[arg-type]
    name = r.device.name
    evidence = {
        "power_w": power,
        "sum_v_i_va": round(apparent, 1),
        "power_factor": pf,
        "expected_w": round(expected, 1),
    }
    if apparent < PLAUSIBILITY_MIN_VA and abs(power) < PLAUSIBILITY_MIN_VA:
        return Finding(
            "plausibility", name, True, "too little load to compare P with V·I", evidence=evidence
        )
    tolerance = PLAUSIBILITY_REL * max(apparent, abs(power)) + PLAUSIBILITY_ABS_W
    if abs(power - expected) <= tolerance:
        return Finding("plausibility", name, True, "P ≈ Σ V·I·PF", evidence=evidence)
    msg = (
        f"P = {power:.0f} W but Σ V·I·PF = {expected:.0f} W (tolerance {tolerance:.0f} W): "
        "a CT/phase wiring error, a wrong scale in the profile, or a faulty meter"
    )
    return Finding(
        "plausibility",
        name,
        False,
        msg,
        steps={
            "en": [
                "Check that each current transformer / phase input is on the phase its "
                "voltage is measured on, in the right direction.",
                "Check the scale of power, voltage and current in the device profile.",
                "Compare with a clamp meter; replace the meter if it disagrees.",
            ],
            "de": [
                "Prüfen, ob jeder Stromwandler / Phaseneingang auf der Phase seiner "
                "Spannungsmessung sitzt, in der richtigen Richtung.",
                "Skalierung von Leistung, Spannung und Strom im Geräteprofil prüfen.",
                "Mit einer Stromzange vergleichen; weicht der Zähler ab, tauschen.",
            ],
        },
        evidence=evidence,
    )


def _energy(rules: Mapping[str, Rule], cfg: StationConfig, r: _Reads) -> Finding | None:
    values = [
        c.values.get("energy_import_wh")
        for c in r.cycles
        if not c.aborted and isinstance(c.values.get("energy_import_wh"), int)
    ]
    if len(values) < 2:
        return None
    name = r.device.name
    if all(b >= a for a, b in itertools.pairwise(values)):
        return Finding(
            "energy",
            name,
            True,
            "energy register never went backwards",
            evidence={"energy_import_wh": values},
        )
    connectors = [c.id for c in cfg.connector if name in (c.meter, c.evse)]
    labels = {"meter": name, "connector": ", ".join(map(str, connectors)) or "-"}
    return _guided(
        rules,
        "energy_register_backwards",
        labels,
        check="energy",
        target=name,
        ok=False,
        message="energy register went backwards between reads",
        evidence={"energy_import_wh": values},
    )


async def run_selftest(
    cfg: StationConfig,
    *,
    reads: int = 3,
    gap_s: float = 1.0,
    facts: StationFacts | None = None,
) -> list[Finding]:
    """Run every check once; returns the findings, problems and passes alike."""
    dcfg = diagnosis_config(cfg)
    rules = load_rules(dcfg.rules_dir)
    station = build_station(cfg, EventBus())
    facts = facts or StationFacts.for_store(cfg.store.path)
    findings: list[Finding] = []
    try:
        # One task per link, devices on a link one after the other (one master per line).
        async def link(poller) -> list[_Reads]:
            return [await _read(pd.device, reads, gap_s) for pd in poller.devices]

        results = [r for group in await asyncio.gather(*map(link, station.pollers)) for r in group]
    finally:
        for p in station.pollers:
            p.link.close()
    by_bus: dict[str, list[tuple[_Reads, Finding]]] = {}
    for r in results:
        f = _scan_finding(cfg, rules, r)
        findings.append(f)
        by_bus.setdefault(cfg.device_by_name(r.device.name).bus, []).append((r, f))
    for bus, entries in by_bus.items():
        silent = [r for r, f in entries if r.cycles and r.cycles[-1].aborted]
        if len(entries) >= 2 and len(silent) == len(entries):
            names = ", ".join(r.device.name for r, _ in entries)
            findings.append(
                _guided(
                    rules,
                    "bus_silent",
                    {"bus": bus, "devices": names},
                    check="bus",
                    target=bus,
                    ok=False,
                    message=f"no device on bus {bus} answers",
                )
            )
    for r in results:
        findings.extend(f for f in (_plausibility(r), _energy(rules, cfg, r)) if f)
    findings.extend(await _station_checks(cfg, rules, facts))
    return findings


def configured_endpoints(cfg: StationConfig) -> dict[str, str]:
    """The central system and the broker the config names, host:port -> what it is: the
    self-test probes them besides `[diagnosis] cloud_endpoints`."""
    out: dict[str, str] = {}
    if cfg.ocpp is not None:
        u = urlsplit(cfg.ocpp.url)
        if u.hostname:
            port = u.port or (443 if u.scheme == "wss" else 80)
            out[f"{u.hostname}:{port}"] = "CSMS"
    if cfg.mqtt is not None:
        out[f"{cfg.mqtt.host}:{cfg.mqtt.port}"] = "MQTT broker"
    return out


async def _station_checks(
    cfg: StationConfig, rules: Mapping[str, Rule], facts: StationFacts
) -> list[Finding]:
    dcfg = diagnosis_config(cfg)
    out: list[Finding] = []
    synced = facts.clock_synced()
    if synced:
        out.append(Finding("clock", "station", True, "clock synchronized (NTP)"))
    else:
        out.append(
            _guided(
                rules,
                "clock_not_synchronized",
                {},
                check="clock",
                target="station",
                ok=False,
                message="clock not synchronized",
            )
        )
    disk = disk_free(cfg.store.path)
    if disk is not None:
        pct, mb = disk
        evidence = {"free_pct": round(pct, 1), "free_mb": round(mb), "path": str(cfg.store.path)}
        if pct < dcfg.disk_min_free_pct or mb < dcfg.disk_min_free_mb:
            out.append(
                _guided(
                    rules,
                    "disk_nearly_full",
                    {},
                    check="disk",
                    target="station",
                    ok=False,
                    message=f"only {pct:.1f} % ({mb:.0f} MB) free",
                    evidence=evidence,
                )
            )
        else:
            out.append(Finding("disk", "station", True, f"{pct:.1f} % free", evidence=evidence))
    configured = configured_endpoints(cfg)
    for ep in dict.fromkeys([*configured, *dcfg.cloud_endpoints]):
        what = f"{configured[ep]} " if ep in configured else ""
        if await reachable(ep):
            out.append(Finding("cloud", ep, True, f"{what}reachable (TCP)"))
        else:
            out.append(
                _guided(
                    rules,
                    "cloud_unreachable",
                    {},
                    check="cloud",
                    target=ep,
                    ok=False,
                    message=f"cannot connect to {what}{ep}",
                )
            )
    return out
