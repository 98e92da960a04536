"""Local Auth List Management against a real CSMS on loopback: full and differential updates,
versions (persisted), VersionMismatch, Failed, NotSupported when LocalAuthListEnabled is off."""

from __future__ import annotations

from ocpp.v16 import call
from sessions_helpers import running
from test_ocpp_core import csms_running, with_ocpp

from agent.events import utcnow
from agent.sessions.model import card_token


def entry(tag: str, status: str | None = "Accepted", **info) -> dict:
    out: dict = {"idTag": tag}
    if status is not None:
        out["idTagInfo"] = {"status": status, **info}
    return out


async def test_full_and_differential_updates(tmp_path):
    async with csms_running() as csms, running(with_ocpp(tmp_path, csms.url)) as rig:
        await csms.wait_for("StatusNotification", "TEST", {"connectorId": 1})

        async def send(version: int, kind: str, items: list[dict]) -> str:
            req = call.SendLocalList(
                list_version=version, update_type=kind, local_authorization_list=items
            )
            return (await csms.call("TEST", req)).status

        async def version() -> int:
            return (await csms.call("TEST", call.GetLocalListVersion())).list_version

        async def verdict(tag: str) -> tuple[str, str]:
            r = await rig.engine.authorizer.authorize(card_token(tag), 0)
            return r.status.value, r.method.value

        assert await version() == 0  # empty (the config's own entries are not the CSMS's)
        full = [entry("CARD-A"), entry("CARD-B", "Blocked"), entry("CARD-C", parentIdTag="G1")]
        assert await send(1, "Full", full) == "Accepted"
        assert await version() == 1
        assert await verdict("CARD-B") == ("Blocked", "LocalList")

        expiry = utcnow().replace(year=utcnow().year + 1).isoformat()
        diff = [entry("CARD-A", None), entry("CARD-D", expiryDate=expiry)]
        assert await send(2, "Differential", diff) == "Accepted"
        assert await version() == 2
        assert await verdict("CARD-D") == ("Accepted", "LocalList")
        with rig.store() as st:
            with st.reading() as c:
                rows = dict(c.execute("SELECT id_token, source FROM auth_list").fetchall())
            assert st.state("local_list_version") == "2"  # persisted with the entries
        assert "CARD-A" not in rows and rows["CARD-D"] == "csms" and rows["CARD-C"] == "csms"

        # Not newer than the list: VersionMismatch, nothing changes.
        assert await send(2, "Differential", [entry("CARD-X")]) == "VersionMismatch"
        assert await send(1, "Differential", [entry("CARD-X")]) == "VersionMismatch"
        # A full update without idTagInfo is malformed: Failed, nothing changes.
        assert await send(5, "Full", [entry("CARD-X", None)]) == "Failed"
        assert await version() == 2
        assert (await verdict("CARD-X"))[1] != "LocalList"

        # A full update replaces the list; an empty one empties it (version 0 = empty).
        assert await send(3, "Full", [entry("CARD-E")]) == "Accepted"
        assert await verdict("CARD-B") != ("Blocked", "LocalList")
        assert await send(4, "Full", []) == "Accepted"
        assert await version() == 0

        res = await csms.call(
            "TEST", call.ChangeConfiguration(key="LocalAuthListEnabled", value="false")
        )
        assert res.status == "Accepted"
        assert await send(5, "Full", [entry("CARD-F")]) == "NotSupported"
        assert await version() == -1
