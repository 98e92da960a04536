"""`evedge config show`: the effective station config (defaults filled in), secrets masked.

Masked: values of keys naming a secret (password, secret, token, key, psk, pin, …; a
`*_dir`/`*_file`/`*_path` key is a location and is shown, never its file's contents),
passwords inside URLs (`wss://cp:***@host`), and the id tokens of the local list (personal
data and credentials: `DE*****42`).
"""

from __future__ import annotations

import json as jsonlib
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.common import DEFAULT_CONFIG, console, emit_json, load_or_exit
from agent.sessions.model import mask

MASK = "********"
SECRET_WORDS = frozenset(
    {"password", "passwd", "secret", "token", "key", "psk", "pin", "credentials", "passphrase"}
)
LOCATION_WORDS = frozenset({"dir", "file", "path"})
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/:@\s]+:)[^/@\s]+@", re.IGNORECASE)


def is_secret(key: str) -> bool:
    """Does a config key name a secret value?"""
    words = key.lower().replace("-", "_").split("_")
    return bool(SECRET_WORDS & set(words)) and words[-1] not in LOCATION_WORDS


def mask_secrets(data: Any, key: str = "", parent: str = "") -> Any:
    """A copy of `data` (the config as JSON-ready values) with every secret masked."""
    if isinstance(data, dict):
        return {k: mask_secrets(v, k, key) for k, v in data.items()}
    if isinstance(data, list):
        return [mask_secrets(v, key, parent) for v in data]
    if data is None or isinstance(data, bool):
        return data
    if is_secret(key):
        return MASK
    if parent == "local_list" and key == "id":
        return mask(str(data))
    if isinstance(data, str):
        return _URL_PASSWORD.sub(r"\g<head>***@", data)
    return data


def _toml_lines(data: dict[str, Any], prefix: str = "") -> list[str]:
    """TOML-like text for reading (values as JSON; not meant to be loaded back)."""
    scalars = {k: v for k, v in data.items() if not _is_table(v)}
    tables = {k: v for k, v in data.items() if _is_table(v)}
    out = [f"{k} = {jsonlib.dumps(v, ensure_ascii=False)}" for k, v in scalars.items()]
    for k, v in tables.items():
        name = f"{prefix}{k}"
        if isinstance(v, list):
            for item in v:
                out += ["", f"[[{name}]]", *_toml_lines(item, f"{name}.")]
        else:
            out += ["", f"[{name}]", *_toml_lines(v, f"{name}.")]
    return out


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
    """Show the effective config, defaults included, with passwords, keys and tokens masked."""
    cfg = load_or_exit(config)
    data = mask_secrets(cfg.model_dump(mode="json"))
    if json:
        emit_json({"file": str(config), "config": data})
        return
    console.print(f"# {config} (effective; secrets masked)", highlight=False, markup=False)
    console.print("\n".join(_toml_lines(data)), highlight=False, markup=False)
