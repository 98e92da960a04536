"""Default config paths of the CLI (a module of its own so `evedge` can name them in every
command's signature without importing the config models), and the installed version."""

from pathlib import Path

DEFAULT_CONFIG = Path("/etc/evedge/station.toml")
# The simulated station of `evedge demo`, `evedge sim` and `evedge simctl`.
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "demo.toml"


def version() -> str:
    """The installed evedge's version (`evedge --version`, `evedge status`, the bundle)."""
    from importlib import metadata

    try:
        return metadata.version("evedge")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: run from a source tree)"
