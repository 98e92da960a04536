"""The catalog of security event types (events.toml), validated at import."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

CATALOG_FILE = Path(__file__).with_name("events.toml")


class EventType(BaseModel):
    """One security event type: its OCPP name, whether it is critical, what it means."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(pattern=r"^[A-Za-z]{1,50}$")  # OCPP: string[50]
    critical: bool
    description: str = Field(min_length=1)


class Catalog(BaseModel):
    """Every known event type, by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: list[EventType] = Field(min_length=1)

    def get(self, name: str) -> EventType:
        """The type called `name`; ValueError naming the known ones otherwise."""
        for e in self.event:
            if e.type == name:
                return e
        known = ", ".join(e.type for e in self.event)
        raise ValueError(f"unknown security event type {name!r} (known: {known})")


def load_catalog(path: Path = CATALOG_FILE) -> Catalog:
    """Read and validate a catalog file; duplicate types are refused."""
    cat = Catalog.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    names = [e.type for e in cat.event]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: security event types listed twice: {', '.join(dupes)}")
    return cat


@cache
def catalog() -> Catalog:
    """The packaged catalog (read once)."""
    return load_catalog()
