"""Files that hold a secret (a CSMS or broker password, the signing key): read only when
readable by their owner alone, with errors that name the file, the mode found and the fix.

The content is never part of an error message.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class SecretFileError(Exception):
    """A secret file that cannot be read, is not a regular file, or others can read."""


def read_secret_bytes(path: Path, what: str) -> bytes:
    """The content of the secret file `path`; `what` names it in errors ("[ocpp]
    password_file", "the signing key").

    Refused (SecretFileError) when it cannot be opened, is not a regular file, or has any
    group/other permission bit (mode 0600 or stricter is required). The mode checked is the
    mode of the file read: fstat on the open descriptor, no window for a swap.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise SecretFileError(f"{what} {path}: cannot read it: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"{what} {path}: not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise SecretFileError(
                f"{what} {path} has mode {mode:04o}: group or others can read it; it must be "
                f"readable by its owner only: run chmod 600 {path}"
            )
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise SecretFileError(f"{what} {path}: cannot read it: {e.strerror or e}") from None
    finally:
        os.close(fd)


def read_secret(path: Path, what: str) -> str:
    """The secret file `path` as UTF-8 text (see read_secret_bytes); refused when it is not
    UTF-8 or holds nothing but white space."""
    try:
        text = read_secret_bytes(path, what).decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError(f"{what} {path}: not UTF-8 text") from None
    if not text.strip():
        raise SecretFileError(f"{what} {path} is empty")
    return text
