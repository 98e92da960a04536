"""A ticket: the driver's report and what the station knew at that moment (the snapshot).

The `Ticket` JSON is the body stored in the `tickets` table and the payload sent to the
cloud; `TicketCreated` (agent/events.py) announces a new one on the bus.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.driver.config import SHIPPED_LANGUAGES
from agent.events import DeviceHealth, FaultRaised, Reading, TicketCreated

Source = Literal["display", "qr", "cli", "api"]
Category = Literal["not_starting", "stopped", "payment", "damaged", "display", "other"]
TICKET_ID = r"^T-[0-9A-F]{6}$"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # keeps \t and \n


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReportRequest(_Strict):
    """A driver's report as it arrives (display, QR page, CLI, local API)."""

    connector: int = Field(ge=1, le=99, strict=True)
    text: str = Field(default="", max_length=1000, description="the driver's own words")
    category: Category = "other"
    source: Source
    lang: str = "en"
    contact: str | None = Field(
        default=None, max_length=120, description="the driver's callback contact (optional)"
    )

    @field_validator("text", "contact")
    @classmethod
    def _clean(cls, v: str | None) -> str | None:
        # Control characters would garble terminals and logs downstream; drop them.
        return None if v is None else _CONTROL.sub("", v).strip()

    @field_validator("lang")
    @classmethod
    def _lang(cls, v: str | None) -> str | None:
        if v is not None and v not in SHIPPED_LANGUAGES:
            raise ValueError(f"must be one of {', '.join(SHIPPED_LANGUAGES)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _something(self) -> ReportRequest:
        if not self.text and self.category == "other":
            raise ValueError("describe the problem (text) or pick a category other than 'other'")
        return self


class ReportInput(ReportRequest):
    """A report as the local API and MQTT take it (a display controller, a kiosk, the QR
    page's backend): `lang` None means the station's driver language."""

    source: Source = "api"
    lang: str | None = None


class SessionSnapshot(_Strict):
    """The connector's running session, or the one that ended last (shortly before)."""

    session_id: str
    state: str  # active | closed
    status: str
    started: AwareDatetime
    ended: AwareDatetime | None
    energy_wh: int
    auth_method: str
    id_token: str  # masked
    stop_reason: str | None
    record_id: str | None = None
    total_incl_vat: str | None = None
    total_excl_vat: str | None = None
    currency: str | None = None


class Snapshot(_Strict):
    """What the station knew about the connector when the driver reported."""

    taken: AwareDatetime
    status: str | None  # the connector's last status (None: never reported)
    faults: list[FaultRaised]  # active faults concerning the connector
    readings: list[Reading]  # the last reading of each quantity of its devices
    health: list[DeviceHealth]  # its devices' communication health
    session: SessionSnapshot | None


class Ticket(_Strict):
    """One driver report with its snapshot: stored, listed on site, sent to the cloud."""

    id: str = Field(pattern=TICKET_ID)
    station: str
    connector: int
    created: AwareDatetime
    source: Source
    category: Category
    lang: str
    text: str
    contact: str | None
    snapshot: Snapshot

    def created_event(self) -> TicketCreated:
        """The bus event announcing this ticket (no personal data: text and contact stay
        in the store)."""
        s = self.snapshot
        return TicketCreated(
            ts=self.created,
            ticket_id=self.id,
            station=self.station,
            connector=self.connector,
            source=self.source,
            category=self.category,
            lang=self.lang,
            session_id=None if s.session is None else s.session.session_id,
            faults=[f.fault_id for f in s.faults],
        )
