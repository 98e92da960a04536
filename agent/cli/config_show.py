"""`evedge config show`: the effective station config (defaults filled in), secrets masked.

Masked: values of keys naming a secret (agent/secretnames.py: a word password, secret, token,
key, psk, pin, … in snake_case, kebab-case or camelCase: `AuthorizationKey`; a
`*_dir`/`*_file`/`*_path` key such as `password_file` is a location and is shown, never its
file's contents; a public key is no secret; a table such as `[ocpp] keys` is walked, its
entries masked by name; the value of an OCPP `{"key": "AuthorizationKey", "value": …}` entry),
passwords inside URLs (`wss://cp:***@host`), and the id tokens of the local list (personal
data and credentials: `DE*****42`).
"""

from __future__ import annotations

import json as jsonlib
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.common import DEFAULT_CONFIG, emit_json, load_or_exit

# mask_secrets lives with the secret names: the daemon masks its bundles without the CLI.
from agent.secretnames import MASK as MASK
from agent.secretnames import mask_secrets as mask_secrets

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_lines(data: dict[str, Any], path: tuple[str, ...] = ()) -> list[str]:
    """`data` as TOML (it parses back with tomllib): a value that is not set (None; TOML
    has no null) becomes a `# key: not set` comment, a file mode (`mode`, `*_mode`) an
    octal integer (`0o660`)."""
    scalars = {k: v for k, v in data.items() if not _is_table(v)}
    tables = {k: v for k, v in data.items() if _is_table(v)}
    out = [
        f"# {k}: not set" if v is None else f"{_toml_key(k)} = {_toml_value(v, k)}"
        for k, v in scalars.items()
    ]
    for k, v in tables.items():
        name = ".".join(_toml_key(p) for p in (*path, k))
        if isinstance(v, list):
            for item in v:
                out += ["", f"[[{name}]]", *toml_lines(item, (*path, k))]
        else:
            out += ["", f"[{name}]", *toml_lines(v, (*path, k))]
    return out


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
    return jsonlib.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007F")


def _toml_value(v: Any, key: str = "") -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"0o{v:o}" if (key == "mode" or key.endswith("_mode")) and v >= 0 else str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return ("-inf" if v < 0 else "inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(i, key) for i in v if i is not None) + "]"
    if isinstance(v, dict):
        items = (f"{_toml_key(k)} = {_toml_value(i, k)}" for k, i in v.items() if i is not None)
        return "{ " + ", ".join(items) + " }"
    return _toml_string(str(v))


def _is_table(v: Any) -> bool:
    return isinstance(v, dict) or (
        isinstance(v, list) and bool(v) and all(isinstance(i, dict) for i in v)
    )


def config_show(
    config: Annotated[Path, typer.Option("--config", "-c", help="station config (TOML)")] = (
        DEFAULT_CONFIG
    ),
    json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show the effective config, defaults included, with passwords, keys and tokens masked.

    Example: `evedge config show -c /etc/evedge/station.toml --json`"""
    cfg = load_or_exit(config)
    data = mask_secrets(cfg.model_dump(mode="json"))
    if json:
        emit_json({"file": str(config), "config": data})
        return
    # Plain stdout, not rich: rich wraps long lines, which would break the TOML.
    sys.stdout.write(f"# {config} (effective; secrets masked)\n")
    sys.stdout.write("\n".join(toml_lines(data)) + "\n")
