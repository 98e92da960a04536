"""Reading a TOML file a person pointed us at, with a clear error for every bad input.

Station configs and device profiles come from technicians: a path may name a directory, a
device such as /dev/zero, a huge or binary file, or hold a NUL byte. Each case is a
`TomlFileError` whose message says what is wrong, never a traceback or an endless read.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

MAX_BYTES = 1_000_000  # far above any real config or profile; stops /dev/zero-like reads
MAX_PATH = 4096  # PATH_MAX on Linux
MAX_NAME = 255  # NAME_MAX


class TomlFileError(ValueError):
    """The file cannot be read as TOML; the message names the file and the problem."""


def check_path(text: str) -> str:
    """`text` if it can name a file at all; ValueError saying why not (NUL, too long)."""
    if "\x00" in text:
        raise ValueError("the path contains a NUL byte")
    if not text:
        raise ValueError("the path is empty")
    if len(text.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise ValueError(f"the path is longer than {MAX_PATH} bytes")
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME for part in text.split("/")):
        raise ValueError(f"a path component is longer than {MAX_NAME} bytes")
    return text


def read_text(path: str | Path, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of the regular file at `path` (at most `max_bytes`)."""
    name = str(path)
    try:
        check_path(name)
    except ValueError as e:
        raise TomlFileError(f"{name!r}: {e}") from None
    try:
        st = os.stat(name)
        if stat.S_ISDIR(st.st_mode):
            raise TomlFileError(f"{name}: is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise TomlFileError(f"{name}: not a regular file (a device, FIFO or socket)")
        if st.st_size > max_bytes:
            raise TomlFileError(f"{name}: too large ({st.st_size} bytes, at most {max_bytes})")
        with open(name, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise TomlFileError(f"cannot read {name}: no such file") from None
    except OSError as e:
        raise TomlFileError(f"cannot read {name}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise TomlFileError(f"{name}: too large (more than {max_bytes} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TomlFileError(
            f"{name}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None


def loads(text: str, name: str, **kwargs: Any) -> dict[str, Any]:
    """Parse TOML `text` (from `name`); TomlFileError for bad syntax or absurd nesting."""
    try:
        return tomllib.loads(text, **kwargs)
    except tomllib.TOMLDecodeError as e:
        raise TomlFileError(f"{name}: not valid TOML: {e}") from None
    except RecursionError:
        raise TomlFileError(f"{name}: not valid TOML: nested too deeply") from None


def load(path: str | Path, max_bytes: int = MAX_BYTES) -> dict[str, Any]:
    """Read and parse the TOML file at `path`."""
    return loads(read_text(path, max_bytes), str(path))
