"""Update tests' peers: hand-made wheels, a stand-in evedge release, a test PKI, a systemd
stand-in (boot check, ExecStart, Restart=on-failure) and a loopback HTTP server."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.server
import os
import ssl
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.update import keys, probation, releases
from agent.update.archive import StoreSchema
from agent.update.build import build

PROBATION_SCRIPT = Path(probation.__file__)
STATE_ENV = "EVEDGE_TEST_UPDATE_STATE"

# The stand-in release's `evedge run`: healthy (writes its marker, like agent/runtime.py),
# never healthy (runs, no marker), or crashing at once. Each start is logged in runs.log.
STANDIN = """\
import os, pathlib, signal, sys, time

import evedge_fakedep  # a locked dependency: must come from the wheelhouse

VERSION, BEHAVIOUR = {version!r}, {behaviour!r}


def main():
    state = pathlib.Path(os.environ[{env!r}])
    with open(state.parent / "runs.log", "a") as f:
        f.write(f"{{VERSION}} {{BEHAVIOUR}} {{evedge_fakedep.VALUE}}\\n")
    if BEHAVIOUR == "crash":
        sys.exit(1)
    if BEHAVIOUR == "healthy":
        state.mkdir(parents=True, exist_ok=True)
        (state / f"healthy-{{VERSION}}").write_text("{{}}")
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    while True:
        time.sleep(3600)
"""


def make_wheel(
    out_dir: Path,
    name: str,
    version: str,
    modules: dict[str, str],
    *,
    requires: tuple[str, ...] = (),
    scripts: dict[str, str] | None = None,
) -> Path:
    """A pure-Python wheel written by hand (no build backend: milliseconds, not seconds)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {f"{m}.py": src for m, src in modules.items()}
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    files[f"{info}/METADATA"] = "\n".join(meta + [f"Requires-Dist: {r}" for r in requires]) + "\n"
    files[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: evedge-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    if scripts:
        lines = "".join(f"{k} = {v}\n" for k, v in scripts.items())
        files[f"{info}/entry_points.txt"] = f"[console_scripts]\n{lines}"
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    whl = out_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return whl


def standin_wheels(out_dir: Path, version: str, behaviour: str) -> list[Path]:
    """The wheelhouse of a stand-in evedge `version`: its wheel and one dependency wheel."""
    src = STANDIN.format(version=version, behaviour=behaviour, env=STATE_ENV)
    return [
        make_wheel(out_dir, "evedge", version, {"evedge_standin": src},
                   requires=("evedge-fakedep==1.0",), scripts={"evedge": "evedge_standin:main"}),
        make_wheel(out_dir, "evedge-fakedep", "1.0", {"evedge_fakedep": "VALUE = 'locked'\n"}),
    ]  # fmt: skip


@dataclass
class Pki:
    """A root CA, a code-signing certificate issued by it, and the roots file."""

    root: object
    root_key: keys.Key
    signer: object
    signer_key: keys.Key
    roots_file: Path

    def archive(
        self,
        out: Path,
        wheels: list[Path],
        version: str,
        *,
        store: StoreSchema | None = None,
        key: keys.Key | None = None,
        chain: bytes | None = None,
    ) -> Path:
        """A signed archive of `wheels` (by this signer unless `key`/`chain` say otherwise)."""
        return build(out, version, f"evedge=={version}", wheels, key or self.signer_key,
                     chain or keys.pem(self.signer), store)  # fmt: skip


def make_pki(tmp: Path) -> Pki:
    """A fresh test PKI in `tmp`."""
    root_key, signer_key = keys.new_key(), keys.new_key()
    root = keys.certificate("Test Manufacturer Root", root_key, ca=True)
    signer = keys.certificate("Test Release Signer", signer_key, (root, root_key))
    roots = tmp / "update-root.pem"
    roots.write_bytes(keys.pem(root))
    return Pki(root, root_key, signer, signer_key, roots)


class Supervisor:
    """Stands in for systemd running the unit: before each start the boot check (the
    unit's ExecStartPre, the same file), then `<current>/venv/bin/evedge run`, restarted
    when it exits with a failure (Restart=on-failure); `restart()` is `systemctl restart`."""

    MAX_STARTS = 20  # a runaway loop ends the test instead of hanging it

    def __init__(self, link: Path, state_dir: Path):
        self.link, self.state_dir = link, state_dir
        self.proc: subprocess.Popen | None = None
        self.started: list[str] = []  # the release each start ran
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        with self._lock:
            if len(self.started) >= self.MAX_STARTS:
                raise RuntimeError("too many starts")
            subprocess.run([sys.executable, str(PROBATION_SCRIPT), str(self.state_dir)],
                           check=True, timeout=60)  # fmt: skip
            self.started.append(releases.current_version(self.link))
            env = {**os.environ, STATE_ENV: str(self.state_dir)}
            self.proc = subprocess.Popen(
                [str(self.link / "venv" / "bin" / "evedge"), "run"], env=env
            )
            if not self._watcher.is_alive():
                self._watcher.start()

    def _stop_proc(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        with self._lock:
            self._stop_proc()
            self.start()

    def _watch(self) -> None:
        while not self._closing.wait(0.05):
            with self._lock:
                failed = self.proc is not None and self.proc.poll() not in (None, 0)
                if failed and len(self.started) < self.MAX_STARTS:
                    self.start()

    def close(self) -> None:
        self._closing.set()
        if self._watcher.is_alive():
            self._watcher.join(timeout=10)
        with self._lock:
            self._stop_proc()


def wait_for(pred: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    """Poll `pred` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        time.sleep(0.05)


LOOPBACK = ip_address("127.0.0.1")


def tls_context(tmp: Path, pki: Pki) -> ssl.SSLContext:
    """A server context for 127.0.0.1 with a certificate from `pki`'s root."""
    key = keys.new_key()
    base = keys.certificate("127.0.0.1", key, (pki.root, pki.root_key), code_signing=False)
    cert = (
        x509.CertificateBuilder(
            subject_name=base.subject, issuer_name=base.issuer, public_key=base.public_key(),
            serial_number=base.serial_number, not_valid_before=base.not_valid_before_utc,
            not_valid_after=base.not_valid_after_utc,
            extensions=[e for e in base.extensions if e.oid != x509.KeyUsage.oid],
        )
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK)]), False)
        .sign(pki.root_key, hashes.SHA256())
    )  # fmt: skip
    (tmp / "tls.pem").write_bytes(keys.pem(cert))
    (tmp / "tls.key").write_bytes(keys.key_pem(key))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "tls.pem", tmp / "tls.key")
    return ctx


@contextlib.contextmanager
def http_server(directory: Path, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """A real HTTP(S) server on 127.0.0.1 serving `directory`; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=10)
