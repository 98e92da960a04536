"""The words of the CLI's fault views in the station's languages, from labels.toml
(validated: every language has every key, nothing else)."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict

FILE = Path(__file__).with_name("labels.toml")


class Labels(BaseModel):
    """One language's words (see labels.toml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    raised: str
    fault: str
    where: str
    severity: str
    faulted: str
    clears: str
    cleared: str
    active: str
    yes: str
    no: str
    active_faults: str
    history: str
    no_active: str
    no_faults: str
    driver: str
    explains: str
    side: str
    evidence: str
    at: str
    what_to_do: str
    cause: str
    do: str
    details: str
    by: str


@cache
def all_labels(path: Path = FILE) -> dict[str, Labels]:
    """Every language's labels, validated (pydantic ValidationError names a missing key)."""
    return {
        lang: Labels.model_validate(words)
        for lang, words in tomllib.loads(path.read_text()).items()
    }


def labels(lang: str) -> Labels:
    """The words for `lang`, English for a language without labels."""
    table = all_labels()
    return table.get(lang, table["en"])
