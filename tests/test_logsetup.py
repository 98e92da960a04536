"""Log redaction (agent/logsetup.py): secrets and full id tokens never reach the rendered log
or the diagnostics ring, whatever the field is called; what a technician needs (the OCPP
configuration key's name, the value of an ordinary key, the auth method) stays readable."""

from __future__ import annotations

import io
import json
import sys

import pytest
import structlog

from agent.logsetup import setup_logging
from agent.secretnames import is_secret_name
from agent.sessions.model import IdToken, mask
from agent.support.logring import RING

TOKEN = "04A1B2C3D4E5F6"  # an RFID UID: personal data and a credential
PASSWORD = "hunter2-correct-horse"


@pytest.fixture(params=[True, False], ids=["json", "console"])
def captured(request):
    """A logger whose rendered output (JSON lines or console text) is returned by `out()`."""
    stream = io.StringIO()
    RING.clear()
    setup_logging("debug", json=request.param, stream=stream)
    yield structlog.get_logger("test"), stream.getvalue
    RING.clear()
    structlog.reset_defaults()


def rendered(out) -> str:
    """Everything logged: the rendered lines plus what the diagnostics ring kept."""
    return out() + json.dumps(RING.events(), default=str)


@pytest.mark.parametrize(
    "field", ["id_tag", "id_token", "idTag", "idToken", "token", "parentIdTag", "ID-TAG"]
)
def test_full_tokens_are_masked_like_the_sessions_mask_them(captured, field):
    log, out = captured
    log.info("auth.check", **{field: TOKEN})
    log.info("auth.check_obj", **{field: IdToken(TOKEN, "ISO14443")})
    text = rendered(out)
    assert TOKEN not in text
    assert text.count(mask(TOKEN)) >= 4  # both events, in the output and in the ring


def test_an_already_masked_token_stays_readable(captured):
    log, out = captured
    log.info("ops.start", token=mask("DEMO-0042"), auth_method="LocalList")
    text = out()
    assert "DE*****42" in text  # told apart from other tokens, not replaced by ***
    assert "LocalList" in text  # auth_method is no secret


@pytest.mark.parametrize(
    "field",
    ["password", "passwd", "secret", "Authorization", "auth_key", "private_key", "api-key"],
)
def test_secret_fields_are_replaced(captured, field):
    log, out = captured
    log.warning("x.setup", **{field: PASSWORD}, detail="kept")
    text = rendered(out)
    assert PASSWORD not in text
    assert "***" in text and "kept" in text


def test_a_secret_ocpp_key_change_hides_the_value_not_the_key(captured):
    log, out = captured
    log.info("ocpp.config_change", key="AuthorizationKey", value=PASSWORD, status="Accepted")
    log.info("ocpp.config_change", key="BasicAuthPassword", value=PASSWORD, status="Accepted")
    log.info("ocpp.config_change", key="HeartbeatInterval", value="300", status="Accepted")
    text = rendered(out)
    assert PASSWORD not in text
    assert "AuthorizationKey" in text and "BasicAuthPassword" in text
    lines = out().splitlines()
    (heartbeat,) = [ln for ln in lines if "HeartbeatInterval" in ln]
    assert "300" in heartbeat  # an ordinary key's value stays readable


def test_nested_payloads_are_redacted(captured):
    log, out = captured
    conf = [
        {"key": "AuthorizationKey", "readonly": False, "value": PASSWORD},
        {"key": "MeterValueSampleInterval", "readonly": False, "value": "60"},
    ]
    log.debug("ocpp.payload", payload={"configurationKey": conf, "idTag": TOKEN})
    text = out()
    assert PASSWORD not in text and TOKEN not in text
    assert "MeterValueSampleInterval" in text and "60" in text and mask(TOKEN) in text


def test_exceptions_still_render_with_their_traceback(captured):
    log, out = captured
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("x.failed", password=PASSWORD)
    text = out()
    assert "RuntimeError: boom" in text and "Traceback" in text and PASSWORD not in text


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("AuthorizationKey", True),
        ("BasicAuthPassword", True),
        ("HTTPPassword", True),
        ("ClientSecret", True),
        ("HeartbeatInterval", False),
        ("MeterPublicKey1", False),
        ("PublicKeyWithSignedMeterValue", False),
        ("GetConfigurationMaxKeys", False),
        ("LocalAuthListEnabled", False),
    ],
)
def test_secret_ocpp_key_names(name, secret):
    assert is_secret_name(name) is secret


def test_console_logs_on_a_terminal_json_under_systemd_or_into_a_pipe() -> None:
    import os

    from agent.logsetup import json_logs_by_default

    leader, follower = os.openpty()
    read_end, write_end = os.pipe()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty, os.fdopen(write_end, "w") as pipe:
            assert json_logs_by_default(tty, environ={}) is False
            assert json_logs_by_default(tty, environ={"JOURNAL_STREAM": "8:1234"}) is True
            assert json_logs_by_default(tty, environ={"INVOCATION_ID": "ab12"}) is True
            assert json_logs_by_default(pipe, environ={}) is True
    finally:
        os.close(leader)
        os.close(follower)
        os.close(read_end)


def test_logging_follows_stderr_after_a_closed_one(monkeypatch, capsys):
    """A command run in-process sets up logging while stderr is the runner's stream, which is
    closed afterwards: later log lines go to the stderr of their time, never raise."""
    import io

    import structlog

    from agent.logsetup import setup_logging

    runner_err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", runner_err)
    setup_logging("info")
    monkeypatch.undo()
    runner_err.close()
    structlog.get_logger("t").warning("after.the.runner")
    assert "after.the.runner" in capsys.readouterr().err
