"""OCPP 1.6 Firmware Management, diagnostics part: GetDiagnostics, DiagnosticsStatusNotification.

GetDiagnostics answers with the file name at once; the upload runs afterwards in a task of
the context (it outlives a reconnect): DiagnosticsStatusNotification Uploading, the bundle
(agent/support/bundle.py) for [startTime, stopTime], the upload (agent/support/upload.py)
tried 1 + `retries` times `retryInterval` apart, then Uploaded or UploadFailed. A
TriggerMessage meanwhile reports Uploading, otherwise Idle. Firmware updates are not
implemented: FirmwareStatusNotification is always Idle.

Bounded (issue 17): one upload at a time (another request meanwhile gets no fileName);
`retries` and `retryInterval` clamped to the [ocpp] upload_* settings; a destination
`[ocpp] upload_allow` does not allow gets no fileName; Reset (soft or hard) and the end of
the service cancel the upload (an attempt already in its worker thread ends by its timeout,
and its result is dropped).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import structlog
from ocpp.routing import after, on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, DiagnosticsStatus, FirmwareStatus

from agent.events import utcnow
from agent.ocpp.context import OcppCallError, OcppContext, OcppOffline
from agent.ocpp.handlers.base import OcppMixin
from agent.support.bundle import build_bundle
from agent.support.upload import UploadError, check_location, public_url, upload

log = structlog.get_logger(__name__)

DEFAULT_RETRIES = 2  # GetDiagnostics without `retries`: the charge point decides
DEFAULT_RETRY_INTERVAL_S = 30


@dataclass(frozen=True)
class UploadJob:
    """One GetDiagnostics request, validated."""

    location: str
    file_name: str
    retries: int
    retry_interval_s: float
    since: datetime | None
    until: datetime | None


@dataclass
class DiagnosticsState:
    """The upload in progress (ctx.parts["diagnostics"]): one at a time."""

    uploading: bool = False
    pending: UploadJob | None = None  # answered, to start after the conf went out
    pending_log: tuple[UploadJob, str, int] | None = None  # GetLog's: job, logType, requestId
    tasks: set[asyncio.Task] = field(default_factory=set)

    def cancel(self) -> list[asyncio.Task]:
        """Stop the upload (Reset, the service's end); returns its tasks to await."""
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        self.uploading, self.pending, self.pending_log = False, None, None
        return tasks


def _time(value: str | None) -> datetime | None:
    if value is None:
        return None
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=utcnow().tzinfo)


async def _notify(ctx: OcppContext, status: DiagnosticsStatus, *, triggered: bool = False) -> None:
    """DiagnosticsStatusNotification; offline is logged, not fatal (the CSMS can trigger it)."""
    try:
        await ctx.link.call(call.DiagnosticsStatusNotification(status=status), triggered=triggered)
    except (OcppOffline, OcppCallError, TimeoutError) as e:
        log.warning("ocpp.diagnostics_status_not_sent", status=status.value, error=str(e))


# The phases of an upload, told by `notify` (DiagnosticsStatusNotification here,
# LogStatusNotification for GetLog: agent/ocpp/handlers/logs.py).
Phase = Literal["uploading", "uploaded", "failed"]
_DIAGNOSTICS_STATUS = {
    "uploading": DiagnosticsStatus.uploading,
    "uploaded": DiagnosticsStatus.uploaded,
    "failed": DiagnosticsStatus.upload_failed,
}


async def run_upload(
    ctx: OcppContext,
    state: DiagnosticsState,
    job: UploadJob,
    build: Callable[[], bytes],
    notify: Callable[[Phase], Awaitable[None]],
) -> bool:
    """Build the file (`build`, in a thread) and upload it per `job`, telling each phase
    to `notify`; True when it arrived."""
    where = public_url(job.location)
    ocfg = ctx.cfg.ocpp
    assert ocfg is not None  # the OCPP service runs only with [ocpp]
    await notify("uploading")
    ok = False
    try:
        data = await asyncio.to_thread(build)
        for attempt in range(1, job.retries + 2):
            try:
                await asyncio.to_thread(
                    upload,
                    data,
                    job.location,
                    job.file_name,
                    timeout=ocfg.upload_timeout_s,
                    allow=ocfg.upload_allow,
                )
            except UploadError as e:
                log.warning("ocpp.diagnostics_upload_failed", attempt=attempt, error=str(e))
                if attempt <= job.retries:
                    await asyncio.sleep(job.retry_interval_s)
                continue
            ok = True
            log.info(
                "ocpp.diagnostics_uploaded",
                location=where,
                file=job.file_name,
                bytes=len(data),
                attempt=attempt,
            )
            break
    except Exception:
        log.exception("ocpp.diagnostics_failed", location=where)
    finally:
        state.uploading = False
    await notify("uploaded" if ok else "failed")
    return ok


class DiagnosticsMixin(OcppMixin):
    """GetDiagnostics and the diagnostics/firmware status senders."""

    def _diagnostics(self) -> DiagnosticsState:
        return self.ctx.parts.setdefault("diagnostics", DiagnosticsState())

    async def send_diagnostics_status(self, *, triggered: bool = False) -> None:
        """DiagnosticsStatusNotification: Uploading while an upload runs, else Idle."""
        uploading = self._diagnostics().uploading
        status = DiagnosticsStatus.uploading if uploading else DiagnosticsStatus.idle
        await self.ctx.link.call(
            call.DiagnosticsStatusNotification(status=status), triggered=triggered
        )

    async def send_firmware_status(self, *, triggered: bool = False) -> None:
        """FirmwareStatusNotification: Idle (evedge does not update firmware over OCPP)."""
        req = call.FirmwareStatusNotification(status=FirmwareStatus.idle)
        await self.ctx.link.call(req, triggered=triggered)

    def _job(self, location: str, retries: Any, retry_interval: Any, start_time: Any,
             stop_time: Any, kind: str = "diagnostics",
             ext: str = "tar.gz") -> UploadJob:  # fmt: skip
        """The request as a job, its retries and interval clamped to the [ocpp] bounds; the
        file is named `<charge point id>-<kind>-<UTC time>.<ext>`."""
        ocfg = self.ctx.cfg.ocpp
        assert ocfg is not None  # the OCPP service runs only with [ocpp]
        stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
        cp_id = self.ctx.parts.get("charge_point_id") or self.ctx.cfg.station.id
        retries = DEFAULT_RETRIES if retries is None else retries
        interval = DEFAULT_RETRY_INTERVAL_S if retry_interval is None else retry_interval
        low, high = ocfg.upload_retry_interval_min_s, ocfg.upload_retry_interval_max_s
        return UploadJob(
            location=location,
            file_name=f"{cp_id}-{kind}-{stamp}.{ext}",
            retries=min(max(0, retries), ocfg.upload_retries_max),
            retry_interval_s=min(max(low, interval), high),
            since=_time(start_time),
            until=_time(stop_time),
        )

    @on(Action.get_diagnostics)
    async def _on_get_diagnostics(
        self,
        location: str,
        retries: int | None = None,
        retry_interval: int | None = None,
        start_time: str | None = None,
        stop_time: str | None = None,
    ) -> call_result.GetDiagnostics:
        state = self._diagnostics()
        reason = "an upload is already running" if state.uploading else None
        if reason is None:
            allow = self.ctx.cfg.ocpp.upload_allow if self.ctx.cfg.ocpp else ()
            reason = await asyncio.to_thread(check_location, location, allow)  # resolves
        if reason is None:
            try:
                job = self._job(location, retries, retry_interval, start_time, stop_time)
            except ValueError as e:
                reason = f"startTime/stopTime: {e}"
        if reason is not None:
            # No fileName: "no diagnostic information is available" (§6.29).
            log.warning("ocpp.diagnostics_refused", location=public_url(location), reason=reason)
            return call_result.GetDiagnostics()
        state.uploading = True
        state.pending = job
        return call_result.GetDiagnostics(file_name=job.file_name)

    @after(Action.get_diagnostics)
    async def _after_get_diagnostics(self, **_: Any) -> None:
        state = self._diagnostics()
        job, state.pending = state.pending, None
        if job is None:
            return
        ctx = self.ctx

        def build() -> bytes:
            return build_bundle(ctx.cfg, ctx.store, since=job.since, until=job.until)

        async def notify(phase: Phase) -> None:
            await _notify(ctx, _DIAGNOSTICS_STATUS[phase])

        upload = run_upload(ctx, state, job, build, notify)
        task = asyncio.create_task(upload, name="ocpp diagnostics")
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)
