"""OCPP 1.6J security extension (whitepaper ed. 3): GetLog and LogStatusNotification.

GetLog uploads either log to `log.remoteLocation` with the diagnostics' machinery
(agent/ocpp/handlers/diagnostics.py: allow-listed destination, clamped retries, one upload
at a time, cancelled by Reset):

- DiagnosticsLog: the diagnostics bundle (agent/support/bundle.py), a .tar.gz;
- SecurityLog: the security events (agent/security/log.py), JSON lines, a .jsonl.

`oldestTimestamp` / `latestTimestamp` bound both. The answer is Accepted with the file name,
or Rejected (another upload running, destination not allowed, bad timestamps); the upload
then reports LogStatusNotification Uploading, Uploaded or UploadFailure with the requestId.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from ocpp.routing import after, on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, Log, LogStatus, UploadLogStatus

from agent.ocpp.context import OcppCallError, OcppContext, OcppOffline
from agent.ocpp.handlers.diagnostics import DiagnosticsMixin, Phase, UploadJob, run_upload
from agent.support.bundle import build_bundle
from agent.support.upload import check_location, public_url

log = structlog.get_logger(__name__)

_LOG_STATUS = {
    "uploading": UploadLogStatus.uploading,
    "uploaded": UploadLogStatus.uploaded,
    "failed": UploadLogStatus.upload_failure,
}


def security_log_bytes(ctx: OcppContext, job: UploadJob) -> bytes:
    """The security events within the job's window, one JSON object a line, oldest first."""
    events = ctx.parts["security_events"].events(oldest=job.since, latest=job.until)
    return "".join(ev.model_dump_json() + "\n" for ev in events).encode()


class LogsMixin(DiagnosticsMixin):
    """GetLog (both log types) and LogStatusNotification."""

    @on(Action.get_log)
    async def _on_get_log(
        self,
        log: dict[str, Any],
        log_type: str,
        request_id: int,
        retries: int | None = None,
        retry_interval: int | None = None,
    ) -> call_result.GetLog:
        state = self._diagnostics()
        location = log["remote_location"]
        reason = "an upload is already running" if state.uploading else None
        if reason is None:
            allow = self.ctx.cfg.ocpp.upload_allow if self.ctx.cfg.ocpp else ()
            reason = await asyncio.to_thread(check_location, location, allow)  # resolves
        if reason is None:
            security = log_type == Log.security_log
            window = log.get("oldest_timestamp"), log.get("latest_timestamp")
            kind, ext = ("security", "jsonl") if security else ("diagnostics", "tar.gz")
            try:
                job = self._job(location, retries, retry_interval, *window, kind, ext)
            except ValueError as e:
                reason = f"oldestTimestamp/latestTimestamp: {e}"
        if reason is not None:
            _log.warning("ocpp.get_log_refused", log_type=log_type, request_id=request_id,
                         location=public_url(location), reason=reason)  # fmt: skip
            return call_result.GetLog(status=LogStatus.rejected)
        state.uploading = True
        state.pending_log = (job, log_type, request_id)
        return call_result.GetLog(status=LogStatus.accepted, filename=job.file_name)

    @after(Action.get_log)
    async def _after_get_log(self, **_: Any) -> None:
        state = self._diagnostics()
        pending, state.pending_log = state.pending_log, None
        if pending is None:
            return
        job, log_type, request_id = pending
        ctx = self.ctx

        def build() -> bytes:
            if log_type == Log.security_log:
                return security_log_bytes(ctx, job)
            return build_bundle(ctx.cfg, ctx.store, since=job.since, until=job.until)

        async def notify(phase: Phase) -> None:
            req = call.LogStatusNotification(status=_LOG_STATUS[phase], request_id=request_id)
            try:
                await ctx.link.call(req)
            except (OcppOffline, OcppCallError, TimeoutError) as e:
                _log.warning("ocpp.log_status_not_sent", status=phase, error=str(e))

        task = asyncio.create_task(
            run_upload(ctx, state, job, build, notify), name=f"ocpp get log {log_type}"
        )
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)


_log = log  # the handler's `log` argument (the request's log object) shadows the logger
