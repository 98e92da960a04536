"""What `evedge config show` and the diagnostics bundle mask: secret values by the words of
their key (snake_case, kebab-case, camelCase), URL passwords, local-list id tokens; what they
show: locations of secret files and public keys."""

from __future__ import annotations

import pytest
from conftest import station_config

from agent.cli.config_show import MASK, mask_secrets
from agent.secretnames import is_secret_name


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "AuthorizationKey",  # OCPP 1.6 security whitepaper: the Basic-auth password
        "HTTPPassword",
        "apiToken",
        "api-token",
        "SECRET_TOKEN",
        "free_vend_token",
        "private_key",
        "psk",
        "Passwd",
    ],
)
def test_secret_names_are_recognised(key):
    assert is_secret_name(key)


@pytest.mark.parametrize(
    "key",
    [
        "password_file",  # a location: shown, its contents never
        "keyFile",
        "key_dir",
        "ca_file",
        "keys",  # the [ocpp] keys table: walked, its entries judged by name
        "MeterPublicKey1",
        "publicKey",
        "keyboard",
        "monkey",
        "AuthorizationCacheEnabled",
        "",
    ],
)
def test_locations_public_keys_and_lookalikes_are_shown(key):
    assert not is_secret_name(key)


def test_nested_camelcase_keys_and_urls_are_masked_in_bundle_data():
    event = {
        "event": "ocpp.change_configuration",
        "request": {"key": "AuthorizationKey", "value": "0123456789abcdef0123"},
        "configurationKey": [
            {"key": "AuthorizationKey", "readonly": False, "value": "0123456789abcdef0123"},
            {"key": "MeterPublicKey1", "readonly": True, "value": "3059301306072a86"},
        ],
        "keys": {"AuthorizationKey": "0123456789abcdef0123", "HeartbeatInterval": "60"},
        "upload": "ftp://diag:hunter2@example.net/up/",
    }
    out = mask_secrets(event)
    assert "0123456789abcdef0123" not in str(out)
    assert out["request"]["value"] == MASK
    assert out["configurationKey"][0]["value"] == MASK
    assert out["configurationKey"][0]["readonly"] is False
    assert out["configurationKey"][1]["value"] == "3059301306072a86"  # a public key
    assert out["keys"] == {"AuthorizationKey": MASK, "HeartbeatInterval": "60"}
    assert out["upload"] == "ftp://diag:***@example.net/up/"
    assert out["event"] == "ocpp.change_configuration"


def test_config_show_masks_the_password_but_shows_its_file(tmp_path):
    cfg = station_config(
        extra=(
            '[ocpp]\nurl = "ws://127.0.0.1:9/ocpp"\nsecurity_profile = 1\n'
            f'password_file = "{tmp_path / "ocpp.pass"}"\n'
            'keys = { MeterValueSampleInterval = "60" }\n'
            '[auth]\nlocal_list = [{ id = "DE-EVE-C12345-42" }]\n'
        )
    )
    data = mask_secrets(cfg.model_dump(mode="json"))
    assert data["ocpp"]["password_file"] == str(tmp_path / "ocpp.pass")
    assert data["ocpp"]["keys"] == {"MeterValueSampleInterval": "60"}
    assert data["auth"]["local_list"][0]["id"] != "DE-EVE-C12345-42"
