"""Which names name a secret: config keys (`evedge config show`, the diagnostics bundle) and
OCPP configuration keys (the log redaction) are judged by the same words.

A name is split into words whatever its case style (snake_case, kebab-case, camelCase, runs
of capitals: "HTTP" in "HTTPPassword"; numbers fall away). It names a secret when one word is
a secret word (password, secret, token, key, psk, pin, ...), unless it is a public key
("MeterPublicKey1") or a location (last word dir/file/path: "password_file" names where the
secret is, not the secret).
"""

from __future__ import annotations

import re
from typing import Any

from agent.sessions.model import mask

SECRET_WORDS = frozenset(
    {"password", "passwd", "passphrase", "secret", "token", "key", "psk", "pin", "credentials"}
)
LOCATION_WORDS = frozenset({"dir", "file", "path"})
# Words of a name: runs of capitals (an acronym), capitalised or lower-case words, numbers;
# separators (_ - .) fall away.
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def is_secret_name(name: str) -> bool:
    """Does a key name a secret value? ("AuthorizationKey", "BasicAuthPassword", "password",
    "apiToken": yes; "password_file", "key_dir", "keys", "MeterPublicKey1",
    "HeartbeatInterval", "GetConfigurationMaxKeys": no)"""
    words = [w.lower() for w in _WORD.findall(name) if not w.isdigit()]
    if not words or words[-1] in LOCATION_WORDS or "public" in words:
        return False
    return bool(SECRET_WORDS & set(words))


MASK = "********"
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/:@\s]+:)[^/@\s]+@", re.IGNORECASE)


def mask_secrets(data: Any, key: str = "", parent: str = "") -> Any:
    """A copy of `data` (the config as JSON-ready values) with every secret masked."""
    if isinstance(data, dict):
        out = {k: mask_secrets(v, k, key) for k, v in data.items()}
        # OCPP configuration entries name the key in a field: {"key": "AuthorizationKey",
        # "value": ...} (GetConfiguration.conf, ChangeConfiguration.req).
        if isinstance(data.get("key"), str) and is_secret_name(data["key"]) and "value" in data:
            out["value"] = MASK
        return out
    if isinstance(data, list):
        return [mask_secrets(v, key, parent) for v in data]
    if data is None or isinstance(data, bool):
        return data
    if is_secret_name(key):
        return MASK
    if parent == "local_list" and key == "id":
        return mask(str(data))
    if isinstance(data, str):
        return _URL_PASSWORD.sub(r"\g<head>***@", data)
    return data
