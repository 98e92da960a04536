"""Half-open time intervals [start, end) in integer µs: union, intersection, difference."""

from __future__ import annotations

from collections.abc import Iterable

Span = tuple[int, int]


def union(spans: Iterable[Span]) -> list[Span]:
    """Sorted, disjoint, non-empty spans covering the same time."""
    out: list[Span] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def intersect(xs: Iterable[Span], ys: Iterable[Span]) -> list[Span]:
    """The time in both."""
    a, b = union(xs), union(ys)
    out: list[Span] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(xs: Iterable[Span], ys: Iterable[Span]) -> list[Span]:
    """The time in `xs` but not in `ys`."""
    out: list[Span] = []
    cut = union(ys)
    for a, b in union(xs):
        for c, d in cut:
            if d <= a or c >= b:
                continue
            if c > a:
                out.append((a, c))
            a = max(a, d)
            if a >= b:
                break
        if a < b:
            out.append((a, b))
    return out


def length(spans: Iterable[Span]) -> int:
    """Total time covered (µs)."""
    return sum(b - a for a, b in union(spans))
