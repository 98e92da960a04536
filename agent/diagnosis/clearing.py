"""A technician's clear of a fault: the arguments the API, MQTT and the CLI send.

Kept apart from the service so the API protocol and the CLI can validate a clear without
importing the agent.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ClearFaultInput(BaseModel):
    """Clear one active fault (API operation / MQTT command `clear_fault`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fault_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    note: str = Field(
        min_length=1, max_length=500, description="what was found or done (kept in the history)"
    )
    by: str = Field(
        default="", max_length=64, pattern=r"^[A-Za-z0-9._:@-]*$", description="who clears it"
    )
