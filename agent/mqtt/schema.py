"""JSON Schemas of every MQTT payload, generated from the pydantic models (payloads.py).

Files: `<stream>.json` per outgoing stream (`/` in a stream name becomes `-`),
`cmd-<name>.json` per command request (with its typed `args`) and `reply-<name>.json` per
command reply (with its typed `result`). `evedge mqtt schemas --out DIR` writes them; the
committed copy lives in agent/mqtt/schemas/ and a test keeps it equal to the models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, create_model

from agent.mqtt.payloads import COMMANDS, MESSAGES, CommandReply, CommandRequest

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
COMMITTED = Path(__file__).resolve().parent / "schemas"


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def command_models(name: str) -> tuple[type[BaseModel], type[BaseModel]]:
    """The request and reply models of command `name`, with typed args and result."""
    args, result = COMMANDS[name]
    request = create_model(
        f"{_camel(name)}Command",
        __base__=CommandRequest,
        __doc__=f"Command `{name}` (topic `cmd/{name}`).",
        args=(args, Field(default_factory=args)),
    )
    reply = create_model(
        f"{_camel(name)}Reply",
        __base__=CommandReply,
        __doc__=f"Reply to `{name}`: `result` when ok, else `error`.",
        result=(result | None, None),
    )
    return request, reply


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for every payload of the contract."""
    models: dict[str, type[BaseModel]] = {
        f"{stream.replace('/', '-')}.json": model for stream, model in MESSAGES.items()
    }
    for name in COMMANDS:
        request, reply = command_models(name)
        models[f"cmd-{name}.json"] = request
        models[f"reply-{name}.json"] = reply
    out = {}
    for file, model in sorted(models.items()):
        # Serialization mode: the schema of the JSON we send (Decimal as string, etc.).
        mode = "validation" if file.startswith("cmd-") else "serialization"
        doc = model.model_json_schema(mode=mode)
        out[file] = {"$schema": SCHEMA_DIALECT, "$id": f"evedge/v1/{file}", **doc}
    return out


def render(doc: dict[str, Any]) -> str:
    """The file text of one schema (stable: sorted keys, 2-space indent, final newline)."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(out: Path) -> list[Path]:
    """Write every schema into `out` (created); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file, doc in schemas().items():
        path = out / file
        path.write_text(render(doc), encoding="utf-8")
        written.append(path)
    return written
