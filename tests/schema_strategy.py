"""Hypothesis strategies from JSON schemas (the draft-04/06 subset the OCPP 1.6 schemas use).

hypothesis-jsonschema 0.23.1 does not run with current Hypothesis (it calls a private
`many.more()` that Hypothesis removed), so the fuzz suites generate from the schemas here:
`type`, `properties`, `required`, `additionalProperties`, `enum`, `maxLength`, `minLength`,
`minimum`, `maximum`, `multipleOf`, `items`, `minItems`, `maxItems`, `format` (date-time,
date, uri) and local `$ref`s; for the pydantic-made MQTT schemas (draft 2020-12) also
`anyOf`, `const`, `null` and a schema without a type (any JSON scalar). Every generated
value is valid against its schema; integers stay in 32 bits (OCPP's integer type).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

#: URIs for `format: uri` (GetDiagnostics, UpdateFirmware): nothing that reaches the network.
URIS = (
    "http://127.0.0.1:9/upload/",
    "ftp://127.0.0.1:9/in/",
    "https://example.invalid/diag/",
    "http://[::1]:9/x",
    "file:///etc/passwd",
    "gopher://localhost/",
)


def from_schema(schema: dict[str, Any], root: dict[str, Any] | None = None) -> st.SearchStrategy:
    """Values valid against `schema` (`root`: where `$ref`s resolve, default `schema`)."""
    root = root if root is not None else schema
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local $refs are supported, not {ref}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return from_schema(target, root)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    if "anyOf" in schema:
        return st.one_of([from_schema(s, root) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind is None:
        return _ANY
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, root) for k in kind])
    maker = _MAKERS.get(kind)
    if maker is None:
        raise ValueError(f"schema type {kind!r} is not supported")
    return maker(schema, root)


def _object(schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy:
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    return st.fixed_dictionaries(
        {k: from_schema(v, root) for k, v in props.items() if k in required},
        optional={k: from_schema(v, root) for k, v in props.items() if k not in required},
    )


def _array(schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy:
    low = schema.get("minItems", 0)
    high = min(schema.get("maxItems", low + 4), low + 4)
    return st.lists(from_schema(schema.get("items", {"type": "string"}), root), min_size=low,
                    max_size=high)  # fmt: skip


def _string(schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy:
    fmt = schema.get("format")
    if fmt == "date-time":
        times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1))
        return times.map(lambda t: t.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z"))
    if fmt == "uri":
        return st.sampled_from(URIS)
    if fmt == "date":
        return st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1)).map(str)
    low = schema.get("minLength", 0)
    high = schema.get("maxLength", 100)
    # Mostly short strings, sometimes as long as the schema allows.
    longest = st.integers(max(low, high - 2), high).map(lambda n: "x" * n)
    return st.one_of(st.text(min_size=low, max_size=min(high, max(low, 12))), longest)


def _integer(schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy:
    # OCPP's integer type is 32-bit (a schema says only "integer").
    low, high = schema.get("minimum", -(2**31)), schema.get("maximum", 2**31 - 1)
    # Small values (connector ids, intervals) find handler paths; big ones find overflows.
    small = st.integers(min_value=max(low, -2), max_value=min(high, 5))
    return st.one_of(small, st.integers(min_value=low, max_value=high))


def _number(schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy:
    step = schema.get("multipleOf")
    if step is not None:
        # Whole multiples, made from Decimal so 0.1 * 3 is 0.3 and not 0.30000000000000004.
        return st.integers(-(10**7), 10**7).map(lambda k: float(Decimal(k) * Decimal(str(step))))
    return st.floats(
        min_value=schema.get("minimum"),
        max_value=schema.get("maximum"),
        allow_nan=False,
        allow_infinity=False,
    )


_ANY = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=8))

_MAKERS = {
    "null": lambda schema, root: st.none(),
    "object": _object,
    "array": _array,
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": lambda schema, root: st.booleans(),
}
