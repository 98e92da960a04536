"""Fuzz the station config and profile parsing behind `evedge config check`.

Inputs, from a fixed seed (tests/fuzzing.py): a valid station config (every section the agent
reads at start: bus, device, connector, store, billing, ocpp, mqtt, api, diagnosis) whose
leaves are replaced by wrong types, huge numbers, NaN/Infinity, NUL bytes and deep nesting,
keys dropped or added; the same file mangled as bytes (inserted, flipped and cut bytes, non-UTF-8,
a BOM, 2,000-deep nesting); device profiles that are a directory, /dev/zero, a FIFO, a symlink
to a device, an over-long or NUL name, or a mangled copy of a shipped profile. Each goes
through `load_config` in-process (what `config check` runs); every input must end in a config
or a `ConfigError`, never another exception. A handful of the nastiest also go through the
`evedge config check` process: exit 0 or 2, a JSON answer, no traceback.

`make test` runs FUZZ_N (200) inputs per test; `make fuzz` 10,000.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fuzzing import FUZZ_SETTINGS
from hypothesis import given
from hypothesis import strategies as st

from agent.config import ConfigError, StationConfig, load_config
from drivers.profile import PROFILE_DIR, load_profile
from hil.procs import EVEDGE

pytestmark = pytest.mark.fuzz

BASE: dict[str, Any] = {
    "station": {"id": "FUZZ-1", "name": "fuzz"},
    "bus": [
        {"name": "lan", "kind": "tcp", "timeout_s": 0.5, "retries": 1},
        {"name": "rs485", "kind": "rtu", "port": "/dev/ttyUSB0", "baudrate": 9600},
    ],
    "device": [
        {"name": "meter1", "profile": "eastron-sdm630", "bus": "rs485", "unit": 1},
        {
            "name": "evse1",
            "profile": "phoenix-ev-charge-control",
            "bus": "lan",
            "host": "127.0.0.1",
            "port": 502,
            "unit": 255,
            "interval_s": 0.5,
        },
    ],
    "connector": [{"id": 1, "evse": "evse1", "meter": "meter1", "max_current_a": 32}],
    "store": {"path": "/tmp/fuzz.db", "readings_max_rows": 100000, "min_free_disk_mb": 50},
    "billing": {"free_vend": True, "key_dir": "/tmp/keys", "timezone": "Europe/Berlin"},
    "ocpp": {"url": "ws://127.0.0.1:9000/ocpp", "security_profile": 0, "keys": {}},
    "mqtt": {"host": "127.0.0.1", "port": 1883, "tls": False, "telemetry_interval_s": 10},
    "log": {"level": "info"},
}


def toml_value(v: Any) -> str:
    """`v` as a TOML value: inline tables and arrays, so any generated shape can be written."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # its escapes (\", \\, \u00XX) are TOML's
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return (
            "{"
            + ", ".join(
                f"{json.dumps(k, ensure_ascii=False)} = {toml_value(x)}" for k, x in v.items()
            )
            + "}"
        )
    raise TypeError(type(v))


def toml_text(doc: dict[str, Any]) -> str:
    return "".join(
        f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}\n" for k, v in doc.items()
    )


def deep(n: int, kind: str) -> str:
    """TOML text nested `n` deep."""
    if kind == "array":
        return "x = " + "[" * n + "]" * n + "\n"
    return "x = " + "{a = " * n + "1" + "}" * n + "\n"


# ------------------------------------------------------------------ generated values

# Text TOML can carry (a lone surrogate is a syntax error; the byte mangling covers those).
text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**63 - 1, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, math.nan, math.inf]),
    st.booleans(),
    text,
    st.sampled_from(
        [
            "",
            "\x00",
            "a\x00b",
            "x" * 5000,
            "ws://127.0.0.1:99999",
            "ws://[::1",
            "ws://",
            "wss://h:0/x",
            "../../etc/passwd",
            "/dev/zero",
            "/tmp",
            "é" * 300,
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of `doc` (dict keys and list indices), inner nodes included."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


ALL_PATHS = paths(BASE)


@st.composite
def mutated_doc(draw) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
            if op == "replace":
                parent[path[-1]] = draw(values)
            elif op == "delete" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif isinstance(parent, dict):
                parent[draw(text)] = draw(values)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation changed the shape under this path
    return doc


MANGLES = ("insert", "flip", "cut", "bom", "deep", "latin1")


def mangle(draw, data: bytearray, ops: tuple[str, ...] = MANGLES, rounds: int = 4) -> bytes:
    """`data` with 1..`rounds` byte-level damages drawn from `ops`."""
    for _ in range(draw(st.integers(1, rounds))):
        op = draw(st.sampled_from(ops))
        at = draw(st.integers(0, len(data)))
        if op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "flip" and data:
            data[min(at, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[at : at + draw(st.sampled_from([1, 50, 200, len(data)]))]
        elif op == "bom":
            data[0:0] = b"\xef\xbb\xbf"
        elif op == "deep":
            n = draw(st.sampled_from([50, 500, 999, 2000, 20000]))
            data += deep(n, draw(st.sampled_from(["array", "table"]))).encode()
        elif op == "latin1":
            data[at:at] = "Stationsname: Müller".encode("latin-1")
    return bytes(data)


@st.composite
def mangled_bytes(draw) -> bytes:
    return mangle(draw, bytearray(toml_text(BASE).encode()))


counter = itertools.count()


def check(path: Path) -> StationConfig | ConfigError:
    """`config check`'s parse of `path`: a config or a ConfigError; anything else fails."""
    load_profile.cache_clear()  # a new file may reuse a name; the check must read it
    try:
        return load_config(path)
    except ConfigError as e:
        assert e.problems and all(p and m for p, m in e.problems), e
        return e


@FUZZ_SETTINGS
@given(doc=mutated_doc())
def test_mutated_configs_end_in_a_config_or_a_clear_error(tmp_path, doc):
    path = tmp_path / f"c{next(counter)}.toml"
    try:
        path.write_text(toml_text(doc), encoding="utf-8", errors="surrogatepass")
    except UnicodeEncodeError:
        return
    check(path)


@FUZZ_SETTINGS
@given(data=mangled_bytes())
def test_mangled_bytes_end_in_a_config_or_a_clear_error(tmp_path, data):
    path = tmp_path / f"b{next(counter)}.toml"
    path.write_bytes(data)
    check(path)


def special_profiles(root: Path) -> list[str]:
    """Profile references that once ended in a traceback (issue 17) and their relatives."""
    (root / "dir.toml").mkdir(exist_ok=True)
    fifo = root / "fifo.toml"
    if not fifo.exists():
        os.mkfifo(fifo)
    zero = root / "zero.toml"
    if not zero.is_symlink():
        zero.symlink_to("/dev/zero")
    (root / "latin1.toml").write_bytes("name = 'Zähler'\n".encode("latin-1"))
    (root / "deep.toml").write_text(deep(2000, "table"))
    (root / "big.toml").write_text("# " + "x" * 2_000_000 + "\n")
    return [
        str(root),
        str(root / "dir.toml"),
        str(fifo),
        str(zero),
        "/dev/zero",
        "/dev/null",
        str(root / "latin1.toml"),
        str(root / "deep.toml"),
        str(root / "big.toml"),
        "x" * 300,
        "x" * 5000 + ".toml",
        "/" + "a/" * 3000 + "p.toml",
        "eastron\x00sdm630",
        "a\x00.toml",
        "",
        "../profiles/eastron-sdm630",
    ]


SHIPPED = sorted(PROFILE_DIR.glob("*.toml"))


@st.composite
def profile_ref(draw, root: Path) -> str:
    if draw(st.booleans()):
        return draw(st.sampled_from(special_profiles(root)))
    shipped = bytearray(draw(st.sampled_from(SHIPPED)).read_bytes())
    data = mangle(draw, shipped, ("insert", "flip", "cut"), rounds=3)
    path = root / f"p{next(counter)}.toml"
    path.write_bytes(data)
    return str(path)


@FUZZ_SETTINGS
@given(data=st.data())
def test_bad_profiles_and_store_paths_are_clear_errors(tmp_path, data):
    doc = copy.deepcopy(BASE)
    doc["device"][0]["profile"] = data.draw(profile_ref(tmp_path))
    if data.draw(st.booleans()):
        doc["store"]["path"] = data.draw(
            st.sampled_from(["a\x00b.db", "/" + "d" * 300 + "/s.db", "", str(tmp_path)])
        )
    path = tmp_path / f"d{next(counter)}.toml"
    path.write_text(toml_text(doc))
    check(path)


# ------------------------------------------------------------------ through the CLI


def cli_inputs(root: Path) -> dict[str, bytes | Path]:
    refs = special_profiles(root)

    def with_profile(ref: str) -> str:
        return toml_text({**BASE, "device": [{**BASE["device"][0], "profile": ref}]})

    return {
        "non-utf8": toml_text(BASE).encode().replace(b"fuzz", b"f\xfc\xfcz"),
        "deep": deep(2000, "array").encode(),
        "nul-store": toml_text({**BASE, "store": {"path": "a\x00b"}}).encode(),
        "bad-port": toml_text({**BASE, "ocpp": {"url": "ws://127.0.0.1:99999"}}).encode(),
        "bad-ipv6": toml_text({**BASE, "ocpp": {"url": "ws://[::1"}}).encode(),
        "profile-dir": with_profile(refs[1]).encode(),
        "profile-zero": with_profile("/dev/zero").encode(),
        "profile-symlink-zero": with_profile(refs[3]).encode(),
        "profile-long": with_profile("x" * 5000 + ".toml").encode(),
        "profile-nul": with_profile("a\x00.toml").encode(),
        "ok": toml_text(BASE).encode(),
        "file-is-dir": root,
        "file-is-zero": Path("/dev/zero"),
    }


@pytest.mark.parametrize(
    "name",
    [
        "non-utf8",
        "deep",
        "nul-store",
        "bad-port",
        "bad-ipv6",
        "profile-dir",
        "profile-zero",
        "profile-symlink-zero",
        "profile-long",
        "profile-nul",
        "ok",
        "file-is-dir",
        "file-is-zero",
    ],
)
def test_config_check_answers_every_bad_file_with_an_exit_code(tmp_path, name):
    src = cli_inputs(tmp_path)[name]
    if isinstance(src, Path):
        path = src
    else:
        path = tmp_path / "station.toml"
        path.write_bytes(src)
    out = subprocess.run(
        [EVEDGE, "config", "check", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    doc = json.loads(out.stdout)
    if name == "ok":
        assert out.returncode == 0 and doc["ok"], out.stdout
    else:
        assert out.returncode == 2 and not doc["ok"] and doc["problems"], out.stdout
