"""Build a signed update archive: `python -m agent.update.build` (`make release`).

Wheelhouse: the evedge wheel of this checkout and its dependency wheels (pip wheel), or the
wheels given with --wheelhouse. Signed with the key in --keys (a test root CA and signer are
generated there on first use; the directory is gitignored): put `<keys>/root.pem` in
`[update] root_ca_file` of the test station.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key

from agent.store.migrations import LATEST_VERSION
from agent.update import keys
from agent.update.archive import FORMAT, Manifest, StoreSchema, pack, sha256_file


def test_keys(keydir: Path) -> tuple[keys.Key, bytes]:
    """The signer key and its chain from `keydir`, made (root + signer) if absent."""
    key_file, chain_file = keydir / "signer.key", keydir / "signer.pem"
    if not key_file.exists():
        keydir.mkdir(parents=True, exist_ok=True, mode=0o700)
        root_key, signer_key = keys.new_key(), keys.new_key()
        root = keys.certificate("evedge test update root", root_key, ca=True)
        signer = keys.certificate("evedge test release signer", signer_key, (root, root_key))
        (keydir / "root.pem").write_bytes(keys.pem(root))
        chain_file.write_bytes(keys.pem(signer))
        key_file.touch(mode=0o600)
        key_file.write_bytes(keys.key_pem(signer_key))
    return load_pem_private_key(key_file.read_bytes(), None), chain_file.read_bytes()


def manifest(version: str, requirement: str, wheels: list[Path], store: StoreSchema) -> bytes:
    """The manifest's bytes (what gets signed) for `wheels`."""
    m = Manifest(
        format=FORMAT,
        version=version,
        requirement=requirement,
        files={f"wheels/{w.name}": sha256_file(w) for w in wheels},
        store=store,
    )
    return json.dumps(m.model_dump(), indent=1, sort_keys=True).encode() + b"\n"


def build(
    out: Path,
    version: str,
    requirement: str,
    wheels: list[Path],
    key,
    chain: bytes,
    store: StoreSchema | None = None,
) -> Path:
    """Write the signed archive `out`; the store schema defaults to this checkout's."""
    store = store or StoreSchema(version=LATEST_VERSION, readable_by=LATEST_VERSION)
    raw = manifest(version, requirement, wheels, store)
    pack(out, raw, keys.sign(key, raw), chain, wheels)
    return out


def main(argv: list[str] | None = None) -> None:
    """`make release`: wheelhouse of this checkout, signed with the test key."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=Path, default=Path("build/release-keys"))
    ap.add_argument("--out-dir", type=Path, default=Path("dist"))
    ap.add_argument("--wheelhouse", type=Path, help="use these wheels instead of pip wheel")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        house = a.wheelhouse or Path(tmp)
        if a.wheelhouse is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(house), "."],
                check=True,
            )
        wheels = sorted(house.glob("*.whl"))
        ours = [w for w in wheels if w.name.startswith("evedge-")]
        if len(ours) != 1:
            sys.exit(f"{house}: need exactly one evedge-*.whl, found {len(ours)}")
        version = ours[0].name.split("-")[1]
        key, chain = test_keys(a.keys)
        a.out_dir.mkdir(parents=True, exist_ok=True)
        out = build(
            a.out_dir / f"evedge-{version}.update",
            version,
            f"evedge=={version}",
            wheels,
            key,
            chain,
        )
    print(f"{out}  (root: {a.keys / 'root.pem'})")


if __name__ == "__main__":
    main()
