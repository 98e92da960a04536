"""Secret files (passwords, the signing key): owner-only modes, specific errors, no content."""

from __future__ import annotations

import os

import pytest

from agent.secretfile import SecretFileError, read_secret, read_secret_bytes


def secret(tmp_path, text: bytes | str, mode: int = 0o600):
    path = tmp_path / "s.pass"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_are_read(tmp_path, mode):
    assert read_secret(secret(tmp_path, "hunter2-hunter2-x\n", mode), "x") == "hunter2-hunter2-x\n"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o601])
def test_any_group_or_other_bit_is_refused_with_mode_and_fix(tmp_path, mode):
    path = secret(tmp_path, "hunter2-hunter2-x", mode)
    with pytest.raises(SecretFileError) as e:
        read_secret_bytes(path, "[ocpp] password_file")
    msg = str(e.value)
    assert msg.startswith(f"[ocpp] password_file {path} has mode {mode:04o}")
    assert f"chmod 600 {path}" in msg and "hunter2" not in msg


def test_missing_directory_empty_and_binary_files_are_named(tmp_path):
    with pytest.raises(SecretFileError, match=r"what .*nope: cannot read it: No such file"):
        read_secret(tmp_path / "nope", "what")
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(SecretFileError, match="not a regular file"):
        read_secret(d, "what")
    with pytest.raises(SecretFileError, match="is empty"):
        read_secret(secret(tmp_path, " \n"), "what")
    with pytest.raises(SecretFileError, match="not UTF-8"):
        read_secret(secret(tmp_path, b"\xff\xfe"), "what")
