"""A small, safe expression language for rule conditions.

    min(meter.voltage_l1, meter.voltage_l2, meter.voltage_l3) < cfg.undervoltage_v
    evse.cp_state in ('C', 'D') and delta(meter.energy_import_wh, 30) == 0

The text is parsed with Python's `ast` and only a whitelist of node types is accepted:
boolean operators, comparisons (also `in` / `not in` against a literal tuple), + - * /,
unary minus and `not`, number / string / boolean literals, dotted names and calls of the
functions below. Nothing is ever passed to eval/exec: the tree is compiled into plain
closures, once, when the rule file is loaded.

Names are dotted references (`meter.voltage_l1`, `health.meter.state`, `cfg.nominal_v`);
the caller decides which exist (`Resolver`), so an unknown quantity is refused at load.

Missing evidence is a value of its own: a stale or unavailable reading is `None`
("unknown"), and so is any arithmetic or comparison involving it. `and` is Kleene's (False
wins, then unknown); `or` is an evidence-or (True wins; otherwise False if any operand is
known, unknown only if none is), so one alternative that cannot be checked does not keep
a fault alive that the other alternatives contradict. `min` / `max` skip unknown values.

Functions:
  min(a, b, ...), max(a, b, ...), abs(x), default(x, fallback)
  age(q)            seconds since reading q last arrived
  unavailable(q)    seconds q has been reported "not available" (0 while it is good)
  delta(q, s)       q now minus q at least s seconds ago (unknown until s s of history)
  rate(q, s)        that difference per second, over the span actually covered
  min_over(q, s)    smallest q in the last s seconds (unknown until s s of history)
  max_over(q, s)    largest q in the last s seconds
where q is a device reading (`meter.energy_import_wh`) and s a literal number of seconds.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Value = float | int | str | bool | None
Kind = Literal["num", "str", "bool", "any"]

MAX_TEXT = 2000
MAX_WINDOW_S = 3600.0
WINDOW_FUNCTIONS = frozenset({"delta", "rate", "min_over", "max_over"})
READING_FUNCTIONS = frozenset({"age", "unavailable"}) | WINDOW_FUNCTIONS
PURE_FUNCTIONS = frozenset({"min", "max", "abs", "default"})


class ExprError(ValueError):
    """A condition is not valid; the message says where and why."""


@dataclass(frozen=True)
class Ref:
    """A dotted name in a condition, e.g. Ref(('health', 'meter', 'state'))."""

    parts: tuple[str, ...]

    @property
    def root(self) -> str:
        """The first part: which object the name belongs to."""
        return self.parts[0]

    def __str__(self) -> str:
        return ".".join(self.parts)


class Resolver(Protocol):
    """What the names of a condition may be: `kind(ref)` says, or raises ExprError."""

    def kind(self, ref: Ref, reading: bool) -> Kind:
        """The value kind of `ref`; `reading` asks for a device reading (for age, delta...)."""
        ...


class Env(Protocol):
    """Where a compiled condition gets its values from at evaluation time."""

    def lookup(self, ref: Ref) -> Value:
        """The current value of a name (None: unknown)."""
        ...

    def reading_fn(self, fn: str, ref: Ref, seconds: float | None) -> Value:
        """The value of age/unavailable/delta/rate/min_over/max_over for a reading."""
        ...

    def wake_in(self, seconds: float) -> None:
        """A comparison will change by the passing of time alone in `seconds` (e.g.
        `unavailable(q) > 30` now at 12 s: in 18 s), so the caller can evaluate again then."""
        ...


Fn = Callable[[Env], Value]


@dataclass
class Expr:
    """A compiled condition: evaluate with `expr(env)`."""

    text: str
    fn: Fn
    refs: set[Ref] = field(default_factory=set)
    windows: dict[Ref, float] = field(default_factory=dict)  # reading -> longest window (s)

    def __call__(self, env: Env) -> Value:
        return self.fn(env)


_CMP: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_ARITH: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def compile_expr(text: str, resolver: Resolver) -> Expr:
    """Parse and check `text`; ExprError naming the offending part if it is not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError("empty condition")
    if len(text) > MAX_TEXT:
        raise ExprError(f"condition longer than {MAX_TEXT} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ExprError(f"not a valid expression: {e.msg} (column {e.offset})") from None
    except (RecursionError, MemoryError, ValueError):
        raise ExprError("expression too deeply nested") from None
    compiler = _Compiler(resolver)
    try:
        fn, _kind = compiler.node(tree.body)
    except RecursionError:
        raise ExprError("expression too deeply nested") from None
    return Expr(text, fn, compiler.refs, compiler.windows)


def _segment(node: ast.expr) -> str:
    return ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__


class _Compiler:
    def __init__(self, resolver: Resolver):
        self.resolver = resolver
        self.refs: set[Ref] = set()
        self.windows: dict[Ref, float] = {}

    def node(self, n: ast.expr) -> tuple[Fn, Kind]:
        method = getattr(self, f"_{type(n).__name__}", None)
        if method is None:
            raise ExprError(f"not allowed in a condition: {_segment(n)!r}")
        return method(n)

    # -------------------------------------------------------------- leaves

    def _Constant(self, n: ast.Constant) -> tuple[Fn, Kind]:
        v = n.value
        if isinstance(v, bool):
            return (lambda _e, v=v: v), "bool"
        if isinstance(v, int | float):
            return (lambda _e, v=v: v), "num"
        if isinstance(v, str):
            return (lambda _e, v=v: v), "str"
        raise ExprError(f"literal {v!r} not allowed (numbers, strings, True, False)")

    def _ref(self, n: ast.expr) -> Ref:
        parts: list[str] = []
        while isinstance(n, ast.Attribute):
            parts.append(n.attr)
            n = n.value
        if not isinstance(n, ast.Name):
            raise ExprError(f"not a name: {_segment(n)!r}")
        parts.append(n.id)
        return Ref(tuple(reversed(parts)))

    def _name(self, n: ast.expr) -> tuple[Fn, Kind]:
        ref = self._ref(n)
        kind = self.resolver.kind(ref, reading=False)
        self.refs.add(ref)
        return (lambda e, ref=ref: e.lookup(ref)), kind

    _Name = _name
    _Attribute = _name

    # ----------------------------------------------------------- operators

    def _BoolOp(self, n: ast.BoolOp) -> tuple[Fn, Kind]:
        parts = [self.node(v)[0] for v in n.values]
        if isinstance(n.op, ast.And):

            def and_(e: Env) -> Value:
                unknown = False
                for p in parts:
                    v = p(e)
                    if v is None:
                        unknown = True
                    elif not v:
                        return False
                return None if unknown else True

            return and_, "bool"

        def or_(e: Env) -> Value:
            known = False
            for p in parts:
                v = p(e)
                if v is None:
                    continue
                if v:
                    return True
                known = True
            return False if known else None

        return or_, "bool"

    def _UnaryOp(self, n: ast.UnaryOp) -> tuple[Fn, Kind]:
        inner, kind = self.node(n.operand)
        if isinstance(n.op, ast.Not):
            return (lambda e: None if (v := inner(e)) is None else not v), "bool"
        if isinstance(n.op, ast.USub | ast.UAdd):
            if kind in ("str", "bool"):
                raise ExprError(f"sign of a non-number: {_segment(n)!r}")
            sign = -1 if isinstance(n.op, ast.USub) else 1
            return (lambda e: None if (v := inner(e)) is None else sign * v), "num"
        raise ExprError(f"operator not allowed: {_segment(n)!r}")

    def _BinOp(self, n: ast.BinOp) -> tuple[Fn, Kind]:
        op = _ARITH.get(type(n.op))
        if op is None:
            raise ExprError(f"operator not allowed (+ - * / only): {_segment(n)!r}")
        left, lk = self.node(n.left)
        right, rk = self.node(n.right)
        if "str" in (lk, rk) or "bool" in (lk, rk):
            raise ExprError(f"arithmetic on a non-number: {_segment(n)!r}")

        def arith(e: Env) -> Value:
            a, b = left(e), right(e)
            if a is None or b is None:
                return None
            try:
                return op(a, b)
            except (ZeroDivisionError, TypeError, OverflowError):
                return None

        return arith, "num"

    def _Compare(self, n: ast.Compare) -> tuple[Fn, Kind]:
        first, kind = self.node(n.left)
        steps: list[tuple[Callable[[Any, Any], bool], Fn]] = []
        for op, comparator in zip(n.ops, n.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                options = self._literal_set(comparator, kind)
                member = isinstance(op, ast.In)
                steps.append(
                    (
                        lambda a, b, member=member: (a in b) == member,
                        lambda _e, options=options: options,
                    )
                )
                kind = "any"
                continue
            cmp = _CMP.get(type(op))
            if cmp is None:
                raise ExprError(f"comparison not allowed: {_segment(n)!r}")
            right, rk = self.node(comparator)
            if _clash(kind, rk, op):
                raise ExprError(
                    f"compares a {_noun(kind)} with a {_noun(rk)}: {_segment(n)!r} "
                    "(a threshold of the wrong type)"
                )
            steps.append((cmp, right))
            kind = rk

        if _grows_past(n):
            return self._growing_compare(first, steps[0][1], steps[0][0], n), "bool"

        def compare(e: Env) -> Value:
            a = first(e)
            unknown = False
            for cmp, right in steps:
                b = right(e)
                if a is None or b is None:
                    unknown = True
                else:
                    try:
                        if not cmp(a, b):
                            return False
                    except TypeError:
                        unknown = True
                a = b
            return None if unknown else True

        return compare, "bool"

    @staticmethod
    def _growing_compare(
        first: Fn, right: Fn, cmp: Callable[[Any, Any], bool], n: ast.Compare
    ) -> Fn:
        """`age(q) > x` / `unavailable(q) >= x`: the left side grows with time between
        readings, so a False tells the env when it turns True (a wake-up, not a poll)."""
        assert isinstance(n.left, ast.Call) and isinstance(n.left.func, ast.Name)
        growing_at_zero = n.left.func.id == "age"  # unavailable 0 = available: not growing

        def compare(e: Env) -> Value:
            a, b = first(e), right(e)
            if a is None or b is None:
                return None
            try:
                if cmp(a, b):
                    return True
                if a > 0 or growing_at_zero:
                    e.wake_in(b - a)
            except TypeError:
                return None
            return False

        return compare

    def _literal_set(self, n: ast.expr, kind: Kind) -> frozenset:
        if not isinstance(n, ast.Tuple | ast.List | ast.Set):
            raise ExprError(f"`in` needs a literal tuple like ('C', 'D'): {_segment(n)!r}")
        values = []
        for elt in n.elts:
            if not isinstance(elt, ast.Constant) or elt.value is None:
                raise ExprError(f"`in` list may hold only literals: {_segment(n)!r}")
            ek: Kind = "str" if isinstance(elt.value, str) else "num"
            if isinstance(elt.value, bool):
                ek = "bool"
            if _clash(kind, ek, ast.Eq()):
                raise ExprError(
                    f"`in` list holds a {_noun(ek)} for a {_noun(kind)}: {_segment(n)!r}"
                )
            values.append(elt.value)
        return frozenset(values)

    # ------------------------------------------------------------- calls

    def _Call(self, n: ast.Call) -> tuple[Fn, Kind]:
        if not isinstance(n.func, ast.Name):
            raise ExprError(f"only plain function calls: {_segment(n)!r}")
        name = n.func.id
        if n.keywords:
            raise ExprError(f"{name}(): no keyword arguments")
        if name in PURE_FUNCTIONS:
            return self._pure(name, n)
        if name in READING_FUNCTIONS:
            return self._reading(name, n)
        known = ", ".join(sorted(PURE_FUNCTIONS | READING_FUNCTIONS))
        raise ExprError(f"unknown function {name}(); known: {known}")

    def _pure(self, name: str, n: ast.Call) -> tuple[Fn, Kind]:
        args = [self.node(a) for a in n.args]
        fns = [f for f, _ in args]
        if name in ("min", "max"):
            if not args:
                raise ExprError(f"{name}() needs at least one argument")
            if any(k in ("str", "bool") for _, k in args):
                raise ExprError(f"{name}() of a non-number: {_segment(n)!r}")
            pick = min if name == "min" else max

            def extreme(e: Env) -> Value:
                vals = [v for f in fns if (v := f(e)) is not None]
                return pick(vals) if vals else None

            return extreme, "num"
        if name == "abs":
            if len(args) != 1:
                raise ExprError("abs() takes one argument")
            (f,) = fns
            return (lambda e: None if (v := f(e)) is None else abs(v)), "num"
        if len(args) != 2:
            raise ExprError("default() takes two arguments: default(x, fallback)")
        f, fallback = fns
        kind = args[0][1] if args[0][1] != "any" else args[1][1]
        return (lambda e: v if (v := f(e)) is not None else fallback(e)), kind

    def _reading(self, name: str, n: ast.Call) -> tuple[Fn, Kind]:
        windowed = name in WINDOW_FUNCTIONS
        want = 2 if windowed else 1
        if len(n.args) != want:
            usage = f"{name}(reading, seconds)" if windowed else f"{name}(reading)"
            raise ExprError(f"{name}() takes {want} argument(s): {usage}")
        target = n.args[0]
        if not isinstance(target, ast.Attribute | ast.Name):
            raise ExprError(f"{name}(): first argument must be a reading like meter.power_w")
        ref = self._ref(target)
        kind = self.resolver.kind(ref, reading=True)
        if windowed and name != "delta" and kind != "num" and kind != "any":
            raise ExprError(f"{name}() of a non-numeric reading {ref}")
        if name == "delta" and kind not in ("num", "any"):
            raise ExprError(f"delta() of a non-numeric reading {ref}")
        self.refs.add(ref)
        seconds: float | None = None
        if windowed:
            s = n.args[1]
            if not isinstance(s, ast.Constant) or isinstance(s.value, bool | str):
                raise ExprError(f"{name}(): the window must be a literal number of seconds")
            seconds = float(s.value)
            if not 0 < seconds <= MAX_WINDOW_S:
                raise ExprError(f"{name}(): window must be in (0, {MAX_WINDOW_S:g}] s")
            self.windows[ref] = max(self.windows.get(ref, 0.0), seconds)
        return (lambda e: e.reading_fn(name, ref, seconds)), "num"


def _grows_past(n: ast.Compare) -> bool:
    """`age(q) > x` or `unavailable(q) >= x`: one comparison whose left side grows with time."""
    left = n.left
    return (
        len(n.ops) == 1
        and isinstance(n.ops[0], ast.Gt | ast.GtE)
        and isinstance(left, ast.Call)
        and isinstance(left.func, ast.Name)
        and left.func.id in ("age", "unavailable")
    )


def _clash(a: Kind, b: Kind, op: ast.cmpop) -> bool:
    if "any" in (a, b) or a == b:
        return False
    # True == 1 is fine; anything else across kinds is a threshold of the wrong type.
    return not (isinstance(op, ast.Eq | ast.NotEq) and {a, b} == {"bool", "num"})


def _noun(kind: Kind) -> str:
    return {"num": "number", "str": "text", "bool": "flag", "any": "value"}[kind]
