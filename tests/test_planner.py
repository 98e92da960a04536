"""Block-read planner: coverage, limits and optimality, checked with hypothesis."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.planner import Block, Span, plan, plan_profile, split
from drivers.profile import Limits, load_profile, profile_names

spans_st = st.lists(
    st.builds(
        Span,
        function=st.sampled_from(["input", "holding"]),
        address=st.integers(0, 300),
        words=st.sampled_from([1, 2, 4]),
    ),
    min_size=1,
    max_size=25,
)
limits_st = st.builds(
    Limits,
    max_registers=st.integers(4, 60),
    max_gap=st.integers(0, 20),
    single_value_reads=st.booleans(),
)


def _optimum(spans: list[Span], limits: Limits) -> int:
    """Fewest blocks by exhaustive dynamic programming over sorted spans (the reference)."""
    total = 0
    for function in {s.function for s in spans}:
        group = sorted({s for s in spans if s.function == function})

        @cache
        def best(i: int, group: tuple[Span, ...] = tuple(group)) -> int:
            if i == len(group):
                return 0
            result = None
            start, end = group[i].address, group[i].end
            for j in range(i, len(group)):
                if j > i:
                    if limits.single_value_reads or group[j].address - end > limits.max_gap:
                        break
                    end = max(end, group[j].end)
                if end - start > limits.max_registers:
                    break
                cand = 1 + best(j + 1)
                result = cand if result is None else min(result, cand)
            return result

        total += best(0)
    return total


@settings(max_examples=300, deadline=None)
@given(spans_st, limits_st)
def test_every_span_is_covered_once_within_limits(spans: list[Span], limits: Limits) -> None:
    blocks = plan(spans, limits)
    covered = [s for b in blocks for s in b.spans]
    assert sorted(covered) == sorted(set(spans))
    for b in blocks:
        assert 1 <= b.count <= limits.max_registers
        for s in b.spans:
            assert s.function == b.function
            assert b.start <= s.address and s.end <= b.end
        if limits.single_value_reads:
            assert len(b.spans) == 1
        # The block is exactly as long as its values need: no padding at either end.
        assert b.start == min(s.address for s in b.spans)
        assert b.end == max(s.end for s in b.spans)


@settings(max_examples=300, deadline=None)
@given(spans_st, limits_st)
def test_gaps_inside_a_block_respect_the_tolerance(spans: list[Span], limits: Limits) -> None:
    for b in plan(spans, limits):
        ordered = sorted(b.spans)
        reach = ordered[0].end
        for s in ordered[1:]:
            assert s.address - reach <= limits.max_gap
            reach = max(reach, s.end)


@settings(max_examples=300, deadline=None)
@given(spans_st, limits_st)
def test_plan_uses_the_fewest_requests(spans: list[Span], limits: Limits) -> None:
    assert len(plan(spans, limits)) == _optimum(spans, limits)


@given(spans_st, limits_st)
def test_split_partitions_a_block(spans: list[Span], limits: Limits) -> None:
    for b in plan(spans, limits):
        parts = split(b)
        if len(b.spans) == 1:
            assert parts == [b]
            continue
        assert len(parts) == 2
        assert sorted(s for p in parts for s in p.spans) == sorted(b.spans)
        for p in parts:
            assert p.count < b.count or len(p.spans) < len(b.spans)
            assert b.start <= p.start and p.end <= b.end


def test_value_larger_than_the_limit_is_a_profile_error() -> None:
    with pytest.raises(ValueError, match="more than the device limit"):
        plan([Span("holding", 0, 4)], Limits(max_registers=2))


def test_sdm630_cycle_is_a_few_blocks() -> None:
    profile = load_profile("eastron-sdm630")
    blocks = plan_profile(profile)
    values = [r for r in profile.readable() if not r.once]
    assert len(blocks) * 5 <= len(values)
    # Float registers start on even addresses and blocks keep them aligned (SDM rejects odd).
    assert all(b.start % 2 == 0 and b.count % 2 == 0 for b in blocks)


@pytest.mark.parametrize("name", profile_names())
def test_every_shipped_profile_plans_within_its_limits(name: str) -> None:
    profile = load_profile(name)
    for once in (False, True):
        for b in plan_profile(profile, once=once):
            assert isinstance(b, Block)
            limit = (
                profile.limits.max_bits
                if b.function in ("coil", "discrete")
                else (profile.limits.max_registers)
            )
            assert b.count <= limit
