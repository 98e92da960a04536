"""Authorization: persisted local list, authorization cache, online authorizer, free vend.

Order for a card (OCPP 1.6 §3.5 style): the local list decides first (Accepted starts,
Blocked/Expired/Invalid refuse); then a valid Accepted cache entry; then the online
authorizer (whose answer is cached); when nobody online can be asked, an unknown token is
refused unless `allow_offline_unknown` (then accepted, as method OfflineUnknown). Remote
and CLI starts are authorized by whoever sent them. Free vend accepts every plug-in under
the configured token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from agent.sessions.config import AuthConfig
from agent.sessions.model import AuthMethod, AuthStatus, IdToken, mask
from agent.sessions.store import SessionStore, set_state

log = structlog.get_logger(__name__)

LIST_VERSION_KEY = "local_list_version"  # in billing_state
_UPSERT_LIST = (
    "INSERT INTO auth_list (id_token, status, expiry_ts, group_id, source, updated_ts) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id_token) DO UPDATE SET status = excluded.status, "
    "expiry_ts = excluded.expiry_ts, group_id = excluded.group_id, source = excluded.source, "
    "updated_ts = excluded.updated_ts"
)


@dataclass(frozen=True)
class AuthResult:
    """The verdict on a token: status, who decided it, and the token's group (parent id)."""

    status: AuthStatus
    method: AuthMethod
    group: str | None = None
    detail: str = ""

    @property
    def accepted(self) -> bool:
        """True when charging may start."""
        return self.status == AuthStatus.ACCEPTED


class OnlineUnavailable(Exception):
    """The online authorizer cannot answer now (offline, timeout)."""


class OnlineAuthorizer(Protocol):
    """Asks the central system about a token (the OCPP issue implements this)."""

    async def authorize(self, token: IdToken) -> tuple[AuthStatus, str | None, int | None]:
        """(status, group id, expiry as µs since epoch or None); OnlineUnavailable if it
        cannot ask now."""
        ...

    def reachable(self) -> bool:
        """Whether the central system can be asked right now (connected)."""
        ...


@dataclass(frozen=True)
class AuthPolicy:
    """The switches of the decision, as OCPP 1.6 names them (LocalPreAuthorize,
    LocalAuthorizeOffline, AuthorizationCacheEnabled, AllowOfflineTxForUnknownId,
    LocalAuthListEnabled). Without a central system they come from [auth]."""

    local_pre_authorize: bool = True  # a locally Accepted token starts without asking online
    local_authorize_offline: bool = True  # offline, the list and cache may start a session
    cache_enabled: bool = True
    allow_offline_unknown: bool = False
    local_list_enabled: bool = True


class Authorizer:
    """Decides on tokens; keeps the local list and cache in the store. `policy` is read at
    every decision (the OCPP charge point points it at its configuration keys)."""

    def __init__(
        self,
        store: SessionStore,
        cfg: AuthConfig,
        online: OnlineAuthorizer | None = None,
    ):
        self.store = store
        self.cfg = cfg
        self.online = online
        self.policy: Callable[[], AuthPolicy] = lambda: AuthPolicy(
            cache_enabled=cfg.cache_enabled, allow_offline_unknown=cfg.allow_offline_unknown
        )

    # ------------------------------------------------------------------ local list

    def seed(self, now_us: int) -> None:
        """Load the config's local list entries (source 'config'); entries the config no
        longer names are removed, entries from the CSMS are left alone."""
        with self.store.tx() as c:
            c.execute("DELETE FROM auth_list WHERE source = 'config'")
            for e in self.cfg.local_list:
                c.execute(
                    "INSERT INTO auth_list (id_token, status, expiry_ts, group_id, source, "
                    "updated_ts) VALUES (?, ?, NULL, ?, 'config', ?) ON CONFLICT (id_token) DO "
                    "UPDATE SET status = excluded.status, group_id = excluded.group_id, "
                    "updated_ts = excluded.updated_ts",
                    (e.id, e.status, e.group, now_us),
                )

    def set_list_entry(
        self,
        token: str,
        status: AuthStatus,
        now_us: int,
        group: str | None = None,
        expiry_us: int | None = None,
        source: str = "csms",
    ) -> None:
        """Add or change a local list entry (SendLocalList)."""
        with self.store.tx() as c:
            c.execute(_UPSERT_LIST, (token, status.value, expiry_us, group, source, now_us))

    def update_list(
        self,
        entries: list[tuple[str, AuthStatus | None, str | None, int | None]],
        full: bool,
        version: int,
        now_us: int,
        source: str = "csms",
    ) -> None:
        """SendLocalList in one transaction: (token, status or None to remove, group,
        expiry µs) entries; `full` first drops the source's entries; the version is kept."""
        with self.store.tx() as c:
            if full:
                c.execute("DELETE FROM auth_list WHERE source = ?", (source,))
            for token, status, group, expiry_us in entries:
                if status is None:
                    c.execute("DELETE FROM auth_list WHERE id_token = ?", (token,))
                else:
                    c.execute(_UPSERT_LIST, (token, status.value, expiry_us, group, source, now_us))
            set_state(c, LIST_VERSION_KEY, str(version))

    def list_version(self) -> int:
        """The version of the last list update (0: none yet)."""
        return int(self.store.state(LIST_VERSION_KEY) or 0)

    def _lookup(self, table: str, token: str) -> tuple[str, int | None, str | None] | None:
        with self.store.reading() as c:
            return c.execute(
                f"SELECT status, expiry_ts, group_id FROM {table} WHERE id_token = ?", (token,)
            ).fetchone()

    def remember(
        self,
        token: str,
        status: AuthStatus,
        group: str | None,
        now_us: int,
        expiry_us: int | None = None,
    ) -> bool:
        """Keep the central system's answer on a token in the authorization cache (from
        Authorize.conf, and Start/StopTransaction.conf's idTagInfo: OCPP 1.6 §3.5.2) until
        its expiryDate or the cache TTL, whichever is first. False when the cache is off."""
        if not self.policy().cache_enabled:
            return False
        expiry = now_us + self.cfg.cache_ttl_s * 1_000_000
        if expiry_us is not None:
            expiry = min(expiry, expiry_us)
        with self.store.tx() as c:
            c.execute(
                "INSERT INTO auth_cache (id_token, status, expiry_ts, group_id, updated_ts) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id_token) DO UPDATE SET status = "
                "excluded.status, expiry_ts = excluded.expiry_ts, group_id = excluded.group_id, "
                "updated_ts = excluded.updated_ts",
                (token, status.value, expiry, group, now_us),
            )
        return True

    # ------------------------------------------------------------------ deciding

    async def authorize(self, token: IdToken, now_us: int) -> AuthResult:
        """The verdict on a card token; never raises for an unreachable central system.

        A list entry that refuses decides. A locally Accepted token (list, or valid cache
        entry) starts at once with LocalPreAuthorize, else the central system is asked
        first and the local answer only used offline (if LocalAuthorizeOffline)."""
        p = self.policy()
        local: AuthResult | None = None
        entry = None
        if p.local_list_enabled:
            entry = await asyncio.to_thread(self._lookup, "auth_list", token.id)
        if entry is not None:
            status, expiry, group = entry
            st = AuthStatus(status)
            if st == AuthStatus.ACCEPTED and expiry is not None and expiry <= now_us:
                st = AuthStatus.EXPIRED
            local = AuthResult(st, AuthMethod.LOCAL_LIST, group)
            if not local.accepted:
                return self._log(token, local)
        elif p.cache_enabled:
            cached = await asyncio.to_thread(self._lookup, "auth_cache", token.id)
            valid_cache = cached is not None and (cached[1] is None or cached[1] > now_us)
            if cached is not None and valid_cache and cached[0] == AuthStatus.ACCEPTED:
                local = AuthResult(AuthStatus.ACCEPTED, AuthMethod.CACHE, cached[2])
        # LocalPreAuthorize covers the online case only (OCPP 1.6 §3.5): offline, the local
        # answer is used only if LocalAuthorizeOffline allows it (decided below).
        online_now = self.online is not None and self.online.reachable()
        if local is not None and (self.online is None or (p.local_pre_authorize and online_now)):
            return self._log(token, local)
        if self.online is not None and online_now:
            try:
                status, group, expiry = await asyncio.wait_for(
                    self.online.authorize(token), self.cfg.online_timeout_s
                )
            except (OnlineUnavailable, TimeoutError, ConnectionError) as e:
                log.warning("auth.online_unavailable", id_tag=token.masked, error=str(e))
            else:
                await asyncio.to_thread(
                    self.remember, token.id, AuthStatus(status), group, now_us, expiry
                )
                return self._log(token, AuthResult(AuthStatus(status), AuthMethod.ONLINE, group))
        if local is not None:
            if p.local_authorize_offline:
                return self._log(token, local)
            return self._log(
                token,
                AuthResult(AuthStatus.UNKNOWN, local.method, detail="offline; local auth is off"),
            )
        if p.allow_offline_unknown:
            return self._log(
                token,
                AuthResult(
                    AuthStatus.ACCEPTED, AuthMethod.OFFLINE_UNKNOWN, detail="offline, unknown token"
                ),
            )
        return self._log(
            token,
            AuthResult(AuthStatus.UNKNOWN, AuthMethod.LOCAL_LIST, detail="not in list or cache"),
        )

    async def recheck(self, token: IdToken, now_us: int) -> AuthResult | None:
        """A running session's token again, from the list (None: nothing changed to say)."""
        entry = await asyncio.to_thread(self._lookup, "auth_list", token.id)
        if entry is None:
            return None
        return AuthResult(AuthStatus(entry[0]), AuthMethod.LOCAL_LIST, entry[2])

    def _log(self, token: IdToken, result: AuthResult) -> AuthResult:
        log.info(
            "auth.decided",
            id_tag=token.masked,
            status=result.status.value,
            method=result.method.value,
            detail=result.detail or None,
        )
        return result


def same_owner(a: IdToken, b: IdToken, group_a: str | None, group_b: str | None) -> bool:
    """May token `b` stop the session `a` started? The same token, or the same group."""
    return a.id == b.id or (group_a is not None and group_a == group_b)


__all__ = ["AuthResult", "Authorizer", "OnlineAuthorizer", "OnlineUnavailable", "mask"]
