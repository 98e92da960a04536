"""OCPP 1.6 Local Auth List Management profile: SendLocalList, GetLocalListVersion (§5.15, §5.10).

The entries live in the store's `auth_list` table through the session engine's Authorizer
(source "csms"; entries seeded from the config file are left alone), and the list version
with them, in one transaction per update. Keys: LocalAuthListEnabled (false: NotSupported,
version -1), SendLocalListMaxLength (entries per request), LocalAuthListMaxLength (entries
kept).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import structlog
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action, UpdateStatus, UpdateType

from agent.events import utcnow
from agent.ocpp.handlers.base import OcppMixin
from agent.sessions.auth import Authorizer
from agent.sessions.model import AuthStatus, mask
from agent.sessions.times import to_us

log = structlog.get_logger(__name__)

SOURCE = "csms"
Entry = tuple[str, AuthStatus | None, str | None, int | None]


class ListRefused(ValueError):
    """The update cannot be applied; the message says why (logged, answered Failed)."""


def parse_entries(items: list[dict[str, Any]], full: bool) -> list[Entry]:
    """AuthorizationData items as (token, status or None = remove, parent id, expiry µs)."""
    out: list[Entry] = []
    seen: set[str] = set()
    for item in items:
        token = item["id_tag"]
        if token in seen:
            raise ListRefused(f"idTag {mask(token)} appears twice")
        seen.add(token)
        info = item.get("id_tag_info")
        if info is None:
            if full:
                raise ListRefused(f"idTag {mask(token)} has no idTagInfo in a full update")
            out.append((token, None, None, None))
            continue
        try:
            status = AuthStatus(info["status"])
        except ValueError:
            raise ListRefused(f"status {info['status']} cannot be kept in a local list") from None
        expiry = info.get("expiry_date")
        expiry_us = None
        if expiry is not None:
            try:
                when = datetime.fromisoformat(expiry.replace("Z", "+00:00"))
                expiry_us = to_us(when)
            except ValueError as e:
                raise ListRefused(f"idTag {mask(token)}: expiryDate {expiry!r}: {e}") from None
        out.append((token, status, info.get("parent_id_tag"), expiry_us))
    return out


def csms_tokens(auth: Authorizer) -> set[str]:
    """The tokens the CSMS put in the list."""
    with auth.store.reading() as c:
        rows = c.execute("SELECT id_token FROM auth_list WHERE source = ?", (SOURCE,)).fetchall()
    return {r[0] for r in rows}


class LocalListMixin(OcppMixin):
    """`@on` handlers of the Local Auth List Management profile."""

    def _authorizer(self) -> Authorizer | None:
        keys = self.ctx.parts["config_keys"]
        if self.ctx.sessions is None or not keys.get_bool("LocalAuthListEnabled"):
            return None
        return self.ctx.sessions.authorizer

    @on(Action.get_local_list_version)
    async def _on_get_local_list_version(self) -> call_result.GetLocalListVersion:
        auth = self._authorizer()
        if auth is None:
            return call_result.GetLocalListVersion(list_version=-1)
        empty = not await asyncio.to_thread(csms_tokens, auth)
        version = 0 if empty else await asyncio.to_thread(auth.list_version)
        return call_result.GetLocalListVersion(list_version=version)

    @on(Action.send_local_list)
    async def _on_send_local_list(
        self,
        list_version: int,
        update_type: str,
        local_authorization_list: list[dict[str, Any]] | None = None,
    ) -> call_result.SendLocalList:
        auth = self._authorizer()
        if auth is None:
            return call_result.SendLocalList(status=UpdateStatus.not_supported)
        full = update_type == UpdateType.full
        items = local_authorization_list or []
        try:
            status = await self._apply_list(auth, list_version, full, items)
        except ListRefused as e:
            log.warning("ocpp.local_list_refused", version=list_version, full=full, reason=str(e))
            return call_result.SendLocalList(status=UpdateStatus.failed)
        return call_result.SendLocalList(status=status)

    async def _apply_list(
        self, auth: Authorizer, version: int, full: bool, items: list[dict[str, Any]]
    ) -> UpdateStatus:
        keys = self.ctx.parts["config_keys"]
        if len(items) > keys.get_int("SendLocalListMaxLength"):
            raise ListRefused(f"{len(items)} entries > SendLocalListMaxLength")
        if version < 0:
            raise ListRefused(f"listVersion {version} is negative")
        entries = parse_entries(items, full)
        current = await asyncio.to_thread(auth.list_version)
        # UpdateStatus.VersionMismatch (§7.48): a differential update not newer than the list.
        if not full and version <= current:
            log.warning("ocpp.local_list_version_mismatch", have=current, got=version)
            return UpdateStatus.version_mismatch
        tokens = set() if full else await asyncio.to_thread(csms_tokens, auth)
        for token, status, _, _ in entries:
            (tokens.discard if status is None else tokens.add)(token)
        if len(tokens) > keys.get_int("LocalAuthListMaxLength"):
            raise ListRefused(f"the list would hold {len(tokens)} > LocalAuthListMaxLength")
        await asyncio.to_thread(auth.update_list, entries, full, version, to_us(utcnow()), SOURCE)
        log.info(
            "ocpp.local_list_updated",
            version=version,
            full=full,
            entries=len(entries),
            size=len(tokens),
        )
        return UpdateStatus.accepted
