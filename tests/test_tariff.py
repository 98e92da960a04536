"""OCPI 2.2.1 tariffs and the cost engine: worked checks, period splitting, bad files, CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from agent.billing.pricing import (
    MeterSample,
    PricingError,
    Session,
    display_prices,
    price_session,
    quote,
    round_money,
    running_cost,
)
from agent.billing.tariff import Tariff, TariffError, load_tariff, parse_tariff, tariff_from_data
from agent.billing.tariff_cmd import app

ROOT = Path(__file__).resolve().parents[1]
TARIFFS = ROOT / "config" / "tariffs"
BERLIN = ZoneInfo("Europe/Berlin")
D = Decimal


def tariff(*elements: dict, **top) -> Tariff:
    return tariff_from_data({"id": "T1", "currency": "EUR", "elements": list(elements), **top})


def el(*components: dict, **restrictions) -> dict:
    out: dict = {"price_components": list(components)}
    if restrictions:
        out["restrictions"] = restrictions
    return out


def comp(kind: str, price: str, step: int = 1, vat: str | None = None) -> dict:
    c = {"type": kind, "price": D(price), "step_size": step}
    if vat is not None:
        c["vat"] = D(vat)
    return c


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def dim(result, kind: str):
    return next(d for d in result.dimensions if d.dimension == kind)


WORKED = tariff(
    el(comp("ENERGY", "0.40", 100), comp("PARKING_TIME", "6.00", 300), comp("FLAT", "0.50"))
)


# ---------------------------------------------------------------- worked checks


def test_worked_check_from_the_reference():
    start = datetime(2024, 5, 2, 8, tzinfo=UTC)
    r = quote(WORKED, 23456, start, start + timedelta(hours=2), 680, tz="Europe/Berlin")
    assert dim(r, "ENERGY").billed_quantity == 23500
    assert dim(r, "ENERGY").excl_vat == D("9.40")
    assert dim(r, "PARKING_TIME").billed_quantity == 900
    assert dim(r, "PARKING_TIME").excl_vat == D("1.50")
    assert dim(r, "FLAT").excl_vat == D("0.50")
    assert str(r.total_excl_vat) == "11.40"


def test_shipped_energy_parking_flat_example_gives_the_worked_check():
    t = load_tariff(TARIFFS / "energy-parking-flat.json")
    start = local(2024, 5, 2, 8)
    r = quote(t, 23456, start, start + timedelta(hours=1), 680, tz=BERLIN)
    assert r.total_excl_vat == D("11.40")
    # incl. VAT per dimension then summed: 11.19 + 1.79 + 0.60 (0.595 rounds half-up)
    assert r.total_incl_vat == D("13.58")


def test_ocpi_example_start_fee_with_two_vat_rates():
    t = tariff(el(comp("FLAT", "0.50", vat="20"), comp("ENERGY", "0.25", vat="10")))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    r = quote(t, 20000, start, start + timedelta(hours=2), tz="UTC")
    assert (r.total_excl_vat, r.total_incl_vat) == (D("5.50"), D("6.10"))


def test_result_is_json_with_decimal_strings():
    start = datetime(2024, 5, 2, 8, tzinfo=UTC)
    r = quote(WORKED, 23456, start, start + timedelta(hours=1), 680, tz="UTC")
    doc = json.loads(json.dumps(r.to_json()))
    assert doc["total_excl_vat"] == "11.40"
    assert doc["tariff_id"] == "T1" and doc["currency"] == "EUR"
    assert doc["periods"][1]["lines"][0]["billed_quantity"] == "900"


# ---------------------------------------------------------------- step_size


@pytest.mark.parametrize(
    ("step", "energy", "billed"),
    [(1, 23456, 23456), (25, 23456, 23475), (100, 23456, 23500), (500, 101, 500), (0, 77, 77)],
)
def test_energy_step_rounds_the_session_total_up(step, energy, billed):
    t = tariff(el(comp("ENERGY", "1.00", step)))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    r = quote(t, energy, start, start + timedelta(hours=1), tz="UTC")
    assert dim(r, "ENERGY").billed_quantity == billed
    assert r.total_excl_vat == round_money(D(billed) / 1000, "EUR")


def test_step_applies_once_per_dimension_with_the_last_period_step():
    # OCPI step_size example #2: 16:35–17:10, 1.20/h step 1800 before 17:00, 2.40/h step 900 after.
    t = tariff(
        el(comp("TIME", "1.20", 1800), start_time="00:00", end_time="17:00"),
        el(comp("TIME", "2.40", 900), start_time="17:00", end_time="20:00"),
    )
    r = quote(t, 0, local(2024, 5, 2, 16, 35), local(2024, 5, 2, 17, 10), tz=BERLIN)
    billed = [p.lines[0].billed_quantity for p in r.periods]
    assert billed == [25 * 60, 20 * 60]  # 35 min -> 45 min, the extra on the last period
    assert r.total_excl_vat == D("1.30")


def test_time_and_parking_share_one_rounding_on_parking():
    t = tariff(el(comp("TIME", "6.00", 900), comp("PARKING_TIME", "6.00", 300)))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    r = quote(t, 0, start, start + timedelta(minutes=10), 8 * 60, tz="UTC")
    assert dim(r, "TIME").billed_quantity == 600  # not rounded: parking is billed after it
    assert dim(r, "PARKING_TIME").billed_quantity == 600  # 8 min -> 10 min
    alone = quote(t, 0, start, start + timedelta(minutes=10), tz="UTC")
    assert dim(alone, "TIME").billed_quantity == 900  # no parking: charging time is rounded


# ---------------------------------------------------------------- element selection


def test_first_matching_element_wins_and_later_ones_are_fallbacks():
    t = tariff(
        el(comp("ENERGY", "0.30"), day_of_week=["WEDNESDAY"]),
        el(comp("TIME", "1.00")),  # has no ENERGY: must not hide the fallback below
        el(comp("ENERGY", "0.50")),
        el(comp("ENERGY", "0.99")),  # matches too, but an earlier element already did
    )
    wed, thu = local(2024, 5, 1, 10), local(2024, 5, 2, 10)
    r_wed = quote(t, 10000, wed, wed + timedelta(hours=1), tz=BERLIN)
    r_thu = quote(t, 10000, thu, thu + timedelta(hours=1), tz=BERLIN)
    assert dim(r_wed, "ENERGY").excl_vat == D("3.00")
    assert dim(r_thu, "ENERGY").excl_vat == D("5.00")
    assert r_thu.periods[0].elements == {"ENERGY": 2, "TIME": 1}


def test_no_matching_element_means_the_dimension_is_free():
    t = tariff(el(comp("ENERGY", "0.30"), start_time="08:00", end_time="09:00"))
    start = local(2024, 5, 2, 12)
    r = quote(t, 10000, start, start + timedelta(hours=1), tz=BERLIN)
    assert r.dimensions == [] and r.total_excl_vat == 0


# ---------------------------------------------------------------- period splitting


NIGHT = tariff(
    el(comp("ENERGY", "0.20"), start_time="22:00", end_time="06:00"),
    el(comp("ENERGY", "0.40")),
)


def test_midnight_wrapping_window_splits_the_session_at_22_00():
    r = quote(NIGHT, 2000, local(2024, 5, 2, 21, 30), local(2024, 5, 2, 23, 30), tz=BERLIN)
    assert [p.start.astimezone(BERLIN).hour for p in r.periods] == [21, 22]
    assert [p.energy_wh for p in r.periods] == [500, 1500]
    assert [p.lines[0].unit_price for p in r.periods] == [D("0.40"), D("0.20")]
    assert r.total_excl_vat == D("0.50")


def test_wrapping_window_ends_at_06_00_the_next_morning():
    r = quote(NIGHT, 3000, local(2024, 5, 2, 23), local(2024, 5, 3, 8), tz=BERLIN)
    ends = [p.end.astimezone(BERLIN) for p in r.periods]
    assert ends[0] == local(2024, 5, 3, 6)
    assert [p.energy_wh for p in r.periods] == [2333, 667]


def test_station_timezone_not_utc_decides_the_window():
    start = datetime(2024, 5, 2, 20, 30, tzinfo=UTC)  # 22:30 in Berlin: already night
    r = quote(NIGHT, 1000, start, start + timedelta(hours=1), tz=BERLIN)
    assert r.total_excl_vat == D("0.20")
    assert quote(NIGHT, 1000, start, start + timedelta(hours=1), tz="UTC").total_excl_vat == D(
        "0.40"
    )


def test_day_of_week_with_the_shipped_time_of_use_example():
    t = load_tariff(TARIFFS / "time-of-use.toml")

    def price_at(*when: int) -> Decimal:
        s = local(*when)
        return quote(t, 1000, s, s + timedelta(minutes=30), tz=BERLIN).total_excl_vat

    assert price_at(2024, 5, 3, 12) == D("0.45")  # Friday
    assert price_at(2024, 5, 4, 12) == D("0.32")  # Saturday
    assert price_at(2024, 5, 5, 12) == D("0.32")  # Sunday
    assert price_at(2024, 5, 4, 23) == D("0.25")  # Saturday night: the night element is first
    # Friday 21:00 -> Saturday 07:00: day, night, then weekend day
    r = quote(t, 10000, local(2024, 5, 3, 21), local(2024, 5, 4, 7), tz=BERLIN)
    assert [p.lines[0].unit_price for p in r.periods] == [D("0.45"), D("0.25"), D("0.32")]
    assert [p.energy_wh for p in r.periods] == [1000, 8000, 1000]


def test_start_date_inclusive_end_date_exclusive():
    t = tariff(
        el(comp("ENERGY", "0.10"), start_date="2024-06-01", end_date="2024-06-03"),
        el(comp("ENERGY", "1.00")),
    )

    def unit(*when: int) -> Decimal:
        s = local(*when)
        return quote(t, 1000, s, s + timedelta(minutes=1), tz=BERLIN).periods[0].lines[0].unit_price

    assert unit(2024, 5, 31, 23, 58) == D("1.00")
    assert unit(2024, 6, 1, 0, 0) == D("0.10")
    assert unit(2024, 6, 2, 23, 58) == D("0.10")
    assert unit(2024, 6, 3, 0, 0) == D("1.00")
    r = quote(t, 2000, local(2024, 6, 2, 23), local(2024, 6, 3, 1), tz=BERLIN)
    assert r.periods[1].start == local(2024, 6, 3)  # split at local midnight of end_date


def test_kwh_thresholds_switch_price_mid_session():
    t = tariff(
        el(comp("ENERGY", "0.50"), max_kwh=D("10")),
        el(comp("ENERGY", "0.30"), min_kwh=D("10")),
    )
    start = datetime(2024, 1, 1, tzinfo=UTC)
    r = quote(t, 25000, start, start + timedelta(hours=5), tz="UTC")
    assert [p.energy_wh for p in r.periods] == [10000, 15000]
    assert r.periods[1].start == start + timedelta(hours=2)
    assert r.total_excl_vat == D("9.50")


def test_kwh_threshold_between_samples_is_interpolated():
    t = tariff(el(comp("ENERGY", "1.00"), max_kwh=D("1.5")), el(comp("ENERGY", "0")))
    s = datetime(2024, 1, 1, tzinfo=UTC)
    samples = [MeterSample(s, 5000), MeterSample(s + timedelta(hours=1), 7000)]
    r = price_session(t, Session(s, samples[-1].at, samples[-1].at, samples), tz="UTC")
    assert [p.energy_wh for p in r.periods] == [1500, 500]
    assert r.periods[0].end == s + timedelta(minutes=45)
    assert r.total_excl_vat == D("1.50")


def test_power_restrictions_follow_the_samples():
    # OCPI max_power example: 1 kWh at 6 kW, 40 kWh at 48 kW, 0.5 kWh at 4 kW -> 20.30
    t = tariff(
        el(comp("ENERGY", "0.20"), max_power=D("16")),
        el(comp("ENERGY", "0.35"), max_power=D("32")),
        el(comp("ENERGY", "0.50")),
    )
    s = datetime(2024, 1, 1, tzinfo=UTC)
    at = [
        s,
        s + timedelta(minutes=10),
        s + timedelta(minutes=60),
        s + timedelta(minutes=67, seconds=30),
    ]
    samples = [
        MeterSample(at[0], 0, 6000),
        MeterSample(at[1], 1000, 48000),
        MeterSample(at[2], 41000, 4000),
        MeterSample(at[3], 41500, 4000),
    ]
    r = price_session(t, Session(s, at[3], at[3], samples), tz="UTC")
    assert [p.energy_wh for p in r.periods] == [1000, 40000, 500]
    assert r.total_excl_vat == D("20.30")


def test_max_duration_restriction_splits_by_elapsed_time():
    # OCPI supermarket example: free 30 min, 0.25/kWh until 60 min, then 0.40/kWh
    t = tariff(
        el(comp("ENERGY", "0.00"), max_duration=1800),
        el(comp("ENERGY", "0.25"), max_duration=3600),
        el(comp("ENERGY", "0.40")),
    )
    s = datetime(2024, 1, 1, tzinfo=UTC)
    samples = [
        MeterSample(s, 0),
        MeterSample(s + timedelta(minutes=30), 5000),
        MeterSample(s + timedelta(minutes=40), 6200),
    ]
    r = price_session(t, Session(s, samples[-1].at, samples[-1].at, samples), tz="UTC")
    assert r.total_excl_vat == D("0.30")


# ---------------------------------------------------------------- DST


@pytest.mark.parametrize(
    ("window", "prices"),
    [
        (("01:00", "03:00"), ["10.00", "1.00"]),  # 01:00-02:00 CET, then 03:00 CEST onwards
        (("02:30", "05:00"), ["1.00", "10.00"]),  # 02:30 never happens: the window opens at 03:00
    ],
)
def test_dst_spring_forward_day_in_berlin(window, prices):
    # 2024-03-31: 02:00 CET jumps to 03:00 CEST, so 01:00 -> 04:00 local is only 2 h.
    t = tariff(
        el(comp("TIME", "10.00"), start_time=window[0], end_time=window[1]),
        el(comp("TIME", "1.00")),
    )
    r = quote(t, 0, local(2024, 3, 31, 1), local(2024, 3, 31, 4), tz=BERLIN)
    assert r.charging_s == 7200
    assert [p.lines[0].unit_price for p in r.periods] == [D(x) for x in prices]
    assert [p.duration_s for p in r.periods] == [3600, 3600]
    assert r.total_excl_vat == D("11.00")


@pytest.mark.parametrize(
    ("window", "hours_at_10", "total"),
    [
        (("02:00", "03:00"), 2, "21.00"),  # 02:00-03:00 CEST and again 02:00-03:00 CET
        (("02:30", "05:00"), D("1.5"), "16.50"),  # 02:30-03:00 CEST, then from 02:30 CET
    ],
)
def test_dst_fall_back_day_in_berlin_repeats_the_hour(window, hours_at_10, total):
    # 2024-10-27: 03:00 CEST falls back to 02:00 CET, so 02:00-03:00 local happens twice.
    t = tariff(
        el(comp("TIME", "10.00"), start_time=window[0], end_time=window[1]),
        el(comp("TIME", "1.00")),
    )
    start = datetime(2024, 10, 26, 23, 30, tzinfo=UTC)  # 01:30 CEST
    end = datetime(2024, 10, 27, 2, 30, tzinfo=UTC)  # 03:30 CET
    r = quote(t, 0, start, end, tz=BERLIN)
    assert r.charging_s == 3 * 3600
    expensive = [p for p in r.periods if p.lines[0].unit_price == D("10.00")]
    assert sum(p.duration_s for p in expensive) == hours_at_10 * 3600
    assert r.total_excl_vat == D(total)


# ---------------------------------------------------------------- price bounds and VAT


MINMAX = tariff(
    el(comp("FLAT", "0.50", vat="20"), comp("ENERGY", "0.25", vat="10")),
    min_price={"excl_vat": D("2.00"), "incl_vat": D("2.20")},
    max_price={"excl_vat": D("10.00"), "incl_vat": D("11.00")},
)


@pytest.mark.parametrize(
    ("energy", "excl", "incl", "limit"),
    [
        (1000, "2.00", "2.20", "min_price"),
        (30000, "8.00", "8.85", None),  # OCPI example: 0.50 + 7.50; 0.60 + 8.25
        (50000, "10.00", "11.00", "max_price"),
    ],
)
def test_min_and_max_price_bound_both_totals(energy, excl, incl, limit):
    start = datetime(2024, 1, 1, tzinfo=UTC)
    r = quote(MINMAX, energy, start, start + timedelta(hours=3), tz="UTC")
    assert (r.total_excl_vat, r.total_incl_vat) == (D(excl), D(incl))
    assert r.limit_excl == limit and r.limit_incl == limit
    assert r.subtotal_excl_vat == sum(d.excl_vat for d in r.dimensions)


def test_excl_bound_without_incl_bound_leaves_incl_unknown():
    t = tariff(el(comp("ENERGY", "0.25", vat="19")), min_price={"excl_vat": D("2.00")})
    start = datetime(2024, 1, 1, tzinfo=UTC)
    r = quote(t, 1000, start, start + timedelta(hours=1), tz="UTC")
    assert r.total_excl_vat == D("2.00") and r.total_incl_vat is None
    assert any("min_price" in n for n in r.notes)


def test_vat_omitted_means_no_vat_applicable():
    # OCPI 2.2.1 PriceComponent.vat: "If omitted, no VAT is applicable. Not providing a VAT
    # is different from 0% VAT": the totals agree, the component says which it was.
    start = datetime(2024, 1, 1, tzinfo=UTC)
    none = quote(
        tariff(el(comp("ENERGY", "0.40"))), 10000, start, start + timedelta(hours=1), tz="UTC"
    )
    zero = quote(
        tariff(el(comp("ENERGY", "0.40", vat="0"))),
        10000,
        start,
        start + timedelta(hours=1),
        tz="UTC",
    )
    assert none.total_excl_vat == zero.total_excl_vat == D("4.00")
    assert none.total_incl_vat == zero.total_incl_vat == D("4.00")
    assert none.dimensions[0].vat is None and "no VAT applicable" in none.notes[0]
    assert zero.dimensions[0].vat == 0 and zero.dimensions[0].vat_amount == 0 and not zero.notes


def test_vat_omitted_on_one_component_still_gives_an_incl_total():
    # A parking fee without VAT beside energy with 19 %: incl. = 11.90 + 3.00.
    t = tariff(el(comp("ENERGY", "0.50", vat="19"), comp("PARKING_TIME", "6.00", step=60)))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    r = quote(t, 20000, start, start + timedelta(hours=1), 1800, tz="UTC")
    assert (r.total_excl_vat, r.total_incl_vat) == (D("13.00"), D("14.90"))
    assert dim(r, "PARKING_TIME").incl_vat == dim(r, "PARKING_TIME").excl_vat == D("3.00")
    shown = display_prices(t, start, tz="UTC")
    assert shown.parking is not None and shown.parking.incl_vat == D("6.00")
    assert shown.parking.incl_vat_per_minute == D("0.1")


def test_free_component_without_vat_does_not_make_incl_unknown():
    t = tariff(el(comp("FLAT", "0.00"), comp("ENERGY", "0.30", vat="19")))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    r = quote(t, 10000, start, start + timedelta(hours=1), tz="UTC")
    assert r.total_incl_vat == D("3.57")


def test_money_rounds_half_up_to_the_minor_unit():
    t = tariff(el(comp("ENERGY", "0.125", vat="0")))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    assert quote(t, 1000, start, start + timedelta(hours=1), tz="UTC").total_excl_vat == D("0.13")
    jpy = tariff_from_data({"id": "J", "currency": "JPY", "elements": [el(comp("ENERGY", "30.5"))]})
    assert quote(jpy, 1000, start, start + timedelta(hours=1), tz="UTC").total_excl_vat == D("31")


# ---------------------------------------------------------------- running cost, display


def test_running_cost_grows_with_the_samples_and_ends_at_the_final_price():
    t = load_tariff(TARIFFS / "energy-parking-flat.json")
    s = local(2024, 5, 2, 9)
    samples = [MeterSample(s + timedelta(minutes=m), 1_000_000 + 500 * m, 30000) for m in range(61)]
    costs = [running_cost(t, s, samples[: k + 1], tz=BERLIN).total_excl_vat for k in range(61)]
    assert costs == sorted(costs)
    assert costs[0] == D("2.00")  # min_price before anything is charged
    final = price_session(t, Session(s, samples[-1].at, samples[-1].at, samples), tz=BERLIN)
    assert costs[-1] == final.total_excl_vat == D("12.50")  # 0.50 + 30 kWh x 0.40
    parked = running_cost(
        t, s, samples, tz=BERLIN, now=s + timedelta(minutes=70), charging_end=samples[-1].at
    )
    assert parked.total_excl_vat == D("13.50")  # + 10 min parking at 6.00/h


def test_display_prices_are_the_components_that_apply_now_incl_vat():
    t = load_tariff(TARIFFS / "energy-parking-flat.json")
    d = display_prices(t, local(2024, 5, 2, 9), tz=BERLIN)
    assert d.energy.incl_vat == D("0.476") and d.flat.incl_vat == D("0.595")
    assert d.parking.incl_vat == D("7.14") and d.parking.incl_vat_per_minute == D("0.1190")
    assert d.time is None and d.min_price.incl_vat == D("2.38")
    tou = load_tariff(TARIFFS / "time-of-use.toml")
    assert display_prices(tou, local(2024, 5, 2, 23), tz=BERLIN).energy.excl_vat == D("0.25")
    assert display_prices(tou, local(2024, 5, 2, 12), tz=BERLIN).energy.incl_vat == D("0.5355")


# ---------------------------------------------------------------- bad input


def test_session_errors_are_specific():
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with pytest.raises(PricingError, match="went back"):
        samples = [MeterSample(start, 500), MeterSample(start + timedelta(minutes=1), 400)]
        price_session(WORKED, Session(start, samples[1].at, samples[1].at, samples), tz="UTC")
    with pytest.raises(PricingError, match="timezone-aware"):
        quote(WORKED, 1, datetime(2024, 1, 1), datetime(2024, 1, 1, 1), tz="UTC")
    with pytest.raises(PricingError, match="unknown timezone"):
        quote(WORKED, 1, start, start + timedelta(hours=1), tz="Mars/Olympus")
    dated = tariff(el(comp("ENERGY", "1")), end_date_time="2023-12-31T00:00:00Z")
    with pytest.raises(PricingError, match="not in force"):
        quote(dated, 1, start, start + timedelta(hours=1), tz="UTC")


def _ok_doc() -> dict:
    return {
        "id": "X",
        "currency": "EUR",
        "elements": [
            {
                "price_components": [{"type": "ENERGY", "price": 0.3, "step_size": 1}],
                "restrictions": {"start_time": "08:00", "end_time": "18:00"},
            }
        ],
    }


def _set(doc: dict, path: tuple, value) -> dict:
    target = doc
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return doc


PC = ("elements", 0, "price_components", 0)
RS = ("elements", 0, "restrictions")


@pytest.mark.parametrize(
    ("path", "value", "where", "words"),
    [
        ((*PC, "price"), -0.1, "elements[0].price_components[0].price", "greater than or equal"),
        ((*PC, "type"), "KWH", "elements[0].price_components[0].type", "ENERGY"),
        ((*PC, "vat"), 120, "elements[0].price_components[0].vat", "less than or equal"),
        ((*PC, "step_size"), -5, "elements[0].price_components[0].step_size", "greater"),
        ((*PC, "stepsize"), 5, "elements[0].price_components[0].stepsize", "unknown field"),
        ((*RS, "end_time"), "24:00", "elements[0].restrictions.end_time", "HH:MM"),
        ((*RS, "end_time"), "08:00", "elements[0].restrictions.end_time", "equals start_time"),
        ((*RS, "start_date"), "2024-06-03", "elements[0].restrictions.end_date", "exclusive"),
        ((*RS, "min_kwh"), 50, "elements[0].restrictions.max_kwh", "greater than min_kwh"),
        (("elements", 0, "price_components"), [], "elements[0].price_components", "at least 1"),
        (("elements",), [], "elements", "at least 1"),
        (("currency",), "euro", "currency", "pattern"),
        (("end_date_time",), "2024-01-01T00:00:00Z", "end_date_time", "after start_date_time"),
        (("min_price",), {"excl_vat": 5, "incl_vat": 4}, "min_price", "below excl_vat"),
    ],
)
def test_invalid_tariff_names_the_field(path, value, where, words):
    doc = _ok_doc()
    doc["elements"][0]["restrictions"]["end_date"] = "2024-06-02"
    doc["elements"][0]["restrictions"]["max_kwh"] = 40
    doc["start_date_time"] = "2024-06-01T00:00:00Z"
    parse_tariff(json.dumps(doc), "good.json")  # the base document is valid
    text = json.dumps(_set(doc, path, value))
    with pytest.raises(TariffError) as info:
        parse_tariff(text, "bad.json")
    problems = dict(info.value.problems)
    assert where in problems, problems
    assert words in problems[where]
    assert str(info.value).startswith(f"bad.json: {where}: ")


def test_files_load_prices_as_exact_decimals(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(_ok_doc()))
    (tmp_path / "t.toml").write_text(
        'id = "X"\ncurrency = "EUR"\n[[elements]]\n'
        'price_components = [{ type = "ENERGY", price = 0.1, vat = 19.0 }]\n'
    )
    for name in ("t.json", "t.toml"):
        c = load_tariff(tmp_path / name).elements[0].price_components[0]
        assert type(c.price) is Decimal and str(c.price) in ("0.3", "0.1")
    # A Python float is taken by its shortest repr, never its binary expansion.
    assert tariff(el({"type": "ENERGY", "price": 0.1})).elements[0].price_components[0].price == D(
        "0.1"
    )


def test_price_bounds_accept_ocpi_and_long_field_names():
    a = tariff(el(comp("FLAT", "1")), min_price={"excl_vat": D("2"), "incl_vat": D("2.38")})
    b = tariff(
        el(comp("FLAT", "1")), min_price={"price_excl_vat": D("2"), "price_incl_vat": D("2.38")}
    )
    assert a.min_price == b.min_price
    assert tariff(el(comp("FLAT", "1"))).warnings() == [
        (
            "elements[0].price_components[0].vat",
            "omitted: no VAT applicable (incl. = excl.); set it if VAT is due",
        )
    ]
    night_only = tariff(el(comp("ENERGY", "1", vat="19"), start_time="22:00", end_time="06:00"))
    assert "no unrestricted fallback for ENERGY" in night_only.warnings()[0][1]


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text(
        'id = "X"\ncurrency = "EUR"\n[[elements]]\n'
        'price_components = [{ type = "ENERGY", price = -1 }]\n'
    )
    with pytest.raises(
        TariffError, match=r"broken.toml: elements\[0\]\.price_components\[0\]\.price"
    ):
        load_tariff(bad)
    (tmp_path / "syntax.json").write_text("{")
    with pytest.raises(TariffError, match=r"syntax.json: \(syntax\): not valid JSON"):
        load_tariff(tmp_path / "syntax.json")
    with pytest.raises(TariffError, match="cannot read"):
        load_tariff(tmp_path / "missing.json")


# ---------------------------------------------------------------- properties


prices = st.decimals(min_value=0, max_value=20, places=2)
vats = st.none() | st.decimals(min_value=0, max_value=27, places=1)
component = st.builds(
    lambda k, p, v, s: {"type": k, "price": p, "vat": v, "step_size": s},
    st.sampled_from(["ENERGY", "TIME", "PARKING_TIME", "FLAT"]),
    prices,
    vats,
    st.integers(0, 1800),
)
hhmm = st.integers(0, 23).map(lambda h: f"{h:02d}:00")
restriction = st.fixed_dictionaries(
    {},
    optional={
        "start_time": hhmm,
        "day_of_week": st.lists(st.sampled_from(["MONDAY", "SATURDAY", "SUNDAY"]), max_size=2),
        "max_kwh": st.integers(1, 60).map(Decimal),
        "min_duration": st.integers(0, 7200),
    },
)
element = st.builds(
    lambda cs, r: {"price_components": cs, **({"restrictions": r} if r else {})},
    st.lists(component, min_size=1, max_size=3),
    restriction,
)
bound = st.none() | prices.map(lambda p: {"excl_vat": p})
starts = st.datetimes(datetime(2024, 1, 1), datetime(2024, 12, 31), timezones=st.just(UTC))


def _valid(doc: dict) -> Tariff | None:
    try:
        return tariff_from_data(doc)
    except TariffError:
        return None  # e.g. max_price below min_price: not a tariff


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(element, min_size=1, max_size=4),
    bound,
    bound,
    st.integers(0, 100_000),
    starts,
    st.integers(0, 10 * 3600),
    st.integers(0, 3 * 3600),
)
def test_cost_is_never_negative_and_totals_add_up(elements, lo, hi, energy, start, secs, park):
    doc = {"id": "P", "currency": "EUR", "elements": elements}
    doc |= {k: v for k, v in (("min_price", lo), ("max_price", hi)) if v}
    t = _valid(doc)
    if t is None:
        return
    energy = energy if secs else 0
    r = quote(t, energy, start, start + timedelta(seconds=secs), park, tz=BERLIN)
    assert r.total_excl_vat >= 0 and (r.total_incl_vat is None or r.total_incl_vat >= 0)
    assert r.subtotal_excl_vat == sum((d.excl_vat for d in r.dimensions), D(0))
    if r.subtotal_incl_vat is not None:
        assert r.subtotal_incl_vat == sum((d.incl_vat for d in r.dimensions), D(0))
    if r.limit_excl is None:
        assert r.total_excl_vat == r.subtotal_excl_vat
    assert sum(p.energy_wh for p in r.periods) == energy
    assert sum(p.duration_s for p in r.periods) == secs + park
    for d in r.dimensions:
        assert d.billed_quantity >= d.quantity


@settings(max_examples=150, deadline=None)
@given(prices, vats, st.integers(0, 5000), st.integers(0, 80_000), st.integers(0, 80_000), bound)
def test_pure_energy_cost_is_monotonic_in_energy(price, vat, step, e1, e2, hi):
    doc = {"id": "E", "currency": "EUR", "elements": [el(comp("ENERGY", str(price), step))]}
    doc["elements"][0]["price_components"][0]["vat"] = vat
    if hi:
        doc["max_price"] = hi
    t = tariff_from_data(doc)
    lo_e, hi_e = sorted((e1, e2))
    start = datetime(2024, 3, 1, tzinfo=UTC)
    a = quote(t, lo_e, start, start + timedelta(hours=2), tz="UTC")
    b = quote(t, hi_e, start, start + timedelta(hours=2), tz="UTC")
    assert a.total_excl_vat <= b.total_excl_vat
    if a.total_incl_vat is not None and b.total_incl_vat is not None:
        assert a.total_incl_vat <= b.total_incl_vat


# ---------------------------------------------------------------- CLI


runner = CliRunner()


@pytest.mark.parametrize("name", sorted(p.name for p in TARIFFS.iterdir()))
def test_cli_check_accepts_the_shipped_examples(name):
    res = runner.invoke(app, ["check", str(TARIFFS / name)])
    assert res.exit_code == 0, res.output
    assert "ok" in res.output
    res = runner.invoke(app, ["check", str(TARIFFS / name), "--json"])
    doc = json.loads(res.stdout)
    assert doc["ok"] is True and doc["warnings"] == []


def test_shipped_examples_cover_the_three_kinds():
    names = {p.name for p in TARIFFS.iterdir()}
    assert {"simple-energy.json", "time-of-use.toml", "energy-parking-flat.json"} <= names


def test_cli_check_rejects_a_bad_file_with_the_field_path(tmp_path):
    doc = _ok_doc()
    doc["elements"][0]["price_components"][0]["type"] = "KWH"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    res = runner.invoke(app, ["check", str(bad), "--json"])
    assert res.exit_code == 2
    problems = json.loads(res.stdout)["problems"]
    assert problems[0]["path"] == "elements[0].price_components[0].type"


def test_cli_quote_json_and_table_on_the_shipped_example():
    args = ["quote", str(TARIFFS / "energy-parking-flat.json"), "--energy-wh", "23456"]
    args += ["--start", "2024-05-02T09:00", "--end", "2024-05-02T10:00", "--parking-s", "680"]
    res = runner.invoke(app, [*args, "--tz", "Europe/Berlin", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["total_excl_vat"] == "11.40" and doc["total_incl_vat"] == "13.58"
    assert doc["start"] == "2024-05-02T07:00:00Z"  # 09:00 in Berlin; results are UTC
    res = runner.invoke(app, args, env={"COLUMNS": "120"})
    assert res.exit_code == 0
    assert "11.40" in res.output and "13.58" in res.output and "23.500 kWh" in res.output


def test_cli_quote_time_of_use_local_time():
    args = ["quote", str(TARIFFS / "time-of-use.toml"), "--energy-wh", "2000", "--json"]
    args += ["--start", "2024-05-02T21:30", "--end", "2024-05-02T23:30", "--tz", "Europe/Berlin"]
    doc = json.loads(runner.invoke(app, args).stdout)
    assert [p["lines"][0]["unit_price"] for p in doc["periods"]] == ["0.45", "0.25"]
    assert doc["total_excl_vat"] == "0.60"  # 0.5 kWh x 0.45 + 1.5 kWh x 0.25 = 0.225 + 0.375


def test_cli_quote_bad_arguments_exit_2():
    f = str(TARIFFS / "simple-energy.json")
    base = ["quote", f, "--energy-wh", "1000"]
    res = runner.invoke(app, [*base, "--start", "2024-05-02T10:00", "--end", "2024-05-02T09:00"])
    assert res.exit_code == 2 and "end must be after start" in res.output
    res = runner.invoke(app, [*base, "--start", "soon", "--end", "2024-05-02T09:00"])
    assert res.exit_code == 2 and "--start" in res.output
    res = runner.invoke(
        app, [*base, "--start", "2024-05-02T08:00", "--end", "2024-05-02T09:00", "--tz", "Nowhere"]
    )
    assert res.exit_code == 2 and "unknown timezone" in res.output


# ---------------------------------------------------------------- quote --session


def _cdr(periods: list[tuple[str, dict[str, str]]], end: str) -> dict:
    return {
        "start_date_time": periods[0][0],
        "end_date_time": end,
        "charging_periods": [
            {"start_date_time": at, "dimensions": [{"type": k, "volume": v} for k, v in d.items()]}
            for at, d in periods
        ],
    }


def _quote_session(tmp_path, tariff_doc: dict, session: dict) -> tuple[int, dict | str]:
    t, s = tmp_path / "t.json", tmp_path / "s.json"
    t.write_text(json.dumps(tariff_doc))
    s.write_text(json.dumps(session))
    res = runner.invoke(
        app, ["quote", str(t), "--session", str(s), "--json"], env={"COLUMNS": "300"}
    )
    return res.exit_code, json.loads(res.stdout) if res.exit_code == 0 else res.output


POWER_TARIFF = {
    "id": "OCPI-MAX-POWER",
    "currency": "EUR",
    "elements": [
        {"price_components": [{"type": "ENERGY", "price": "0.20", "vat": 20}],
         "restrictions": {"max_power": 16.00}},
        {"price_components": [{"type": "ENERGY", "price": "0.35", "vat": 20}],
         "restrictions": {"max_power": 32.00}},
        {"price_components": [{"type": "ENERGY", "price": "0.50", "vat": 20}]},
    ],
}  # fmt: skip


def test_quote_session_prices_the_ocpi_max_power_case_from_its_charging_periods(tmp_path):
    # OCPI 2.2.1 max_power example: 1 kWh at 6 kW, 40 kWh at 48 kW, 0.5 kWh at 4 kW.
    cdr = _cdr(
        [
            ("2024-01-01T00:00:00Z", {"ENERGY": "1", "MAX_POWER": "6"}),
            ("2024-01-01T00:10:00Z", {"ENERGY": "40", "MAX_POWER": "48"}),
            ("2024-01-01T01:00:00Z", {"ENERGY": "0.5", "MAX_POWER": "4"}),
        ],
        "2024-01-01T01:07:30Z",
    )
    code, r = _quote_session(tmp_path, POWER_TARIFF, cdr)
    assert code == 0, r
    assert [p["energy_wh"] for p in r["periods"]] == [1000, 40000, 500]
    assert [p["lines"][0]["unit_price"] for p in r["periods"]] == ["0.20", "0.50", "0.20"]
    assert (r["total_excl_vat"], r["total_incl_vat"]) == ("20.30", "24.36")


def test_quote_session_takes_current_parking_and_leaves_reservations_out(tmp_path):
    t = {
        "id": "CUR",
        "currency": "EUR",
        "elements": [
            {"price_components": [{"type": "ENERGY", "price": "0.30"}],
             "restrictions": {"max_current": 20}},
            {"price_components": [{"type": "ENERGY", "price": "0.40"},
                                  {"type": "PARKING_TIME", "price": "6.00", "step_size": 60}]},
        ],
    }  # fmt: skip
    cdr = _cdr(
        [
            ("2024-01-01T09:50:00Z", {"RESERVATION_TIME": "0.1666"}),
            ("2024-01-01T10:00:00Z", {"ENERGY": "5", "CURRENT": "16"}),
            ("2024-01-01T11:00:00Z", {"ENERGY": "10", "CURRENT": "32"}),
            ("2024-01-01T12:00:00Z", {"PARKING_TIME": "0.5"}),
        ],
        "2024-01-01T12:30:00Z",
    )
    code, r = _quote_session(tmp_path, t, cdr)
    assert code == 0, r
    # 5 kWh x 0.30 + 10 kWh x 0.40 + 0.5 h x 6.00; no VAT given: incl. = excl.
    assert (r["total_excl_vat"], r["total_incl_vat"]) == ("8.50", "8.50")
    assert r["start"] == "2024-01-01T10:00:00Z" and r["parking_s"] == "1800"
    assert any("reservation time is not priced" in n for n in r["notes"])
    bad = _cdr([("2024-01-01T10:00:00Z", {"PARKING_TIME": "1"}),
                ("2024-01-01T11:00:00Z", {"ENERGY": "1"})], "2024-01-01T12:00:00Z")  # fmt: skip
    code, out = _quote_session(tmp_path, t, bad)
    assert code == 2 and "charging after parking is not supported" in out
    code, out = _quote_session(tmp_path, t, {"kwh": 3})
    assert code == 2 and "no charging_periods" in out
    both = ["quote", str(tmp_path / "t.json"), "--session", str(tmp_path / "s.json")]
    res = runner.invoke(app, [*both, "--energy-wh", "5"], env={"COLUMNS": "300"})
    assert res.exit_code == 2 and "not both" in res.output
    res = runner.invoke(app, ["quote", str(tmp_path / "t.json"), "--energy-wh", "5"])
    assert res.exit_code == 2 and "--session FILE, or all of" in res.output


def test_quote_session_reproduces_an_ocpi_cdr_total_from_time_and_total_energy(tmp_path):
    # The shape of OCPI 2.2.1's CDR example: one TIME period of 1.973 h at 2.00/h + 10 %,
    # step 300 s, energy only as total_energy: 1 h 58 min 23 s billed as 2 h.
    time_comp = {"type": "TIME", "price": 2.00, "vat": 10.0, "step_size": 300}
    t = {"id": "12", "currency": "EUR", "elements": [{"price_components": [time_comp]}]}
    cdr = {
        **_cdr([("2015-06-29T21:39:09Z", {"TIME": "1.973"})], "2015-06-29T23:37:32Z"),
        "total_energy": 15.342,
        "total_cost": {"excl_vat": 4.00, "incl_vat": 4.40},
    }
    code, r = _quote_session(tmp_path, t, cdr)
    assert code == 0, r
    assert (r["total_excl_vat"], r["total_incl_vat"]) == ("4.00", "4.40")
    assert r["energy_wh"] == 15342 and r["charging_s"] == "7103"
    assert r["dimensions"][0]["billed_quantity"] == "7200"
