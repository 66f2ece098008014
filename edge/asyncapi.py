"""Builds the AsyncAPI 3.0 document of the device's MQTT interface from
:mod:`edge.payloads`. ``python -m edge.asyncapi > docs/asyncapi.json`` regenerates it; a
test fails when the committed file differs from what the models say."""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from edge import __version__
from edge.payloads import (
    CommandReply,
    CommandRequest,
    EventBatch,
    SignedDocument,
    StateSnapshot,
    Status,
)

REF = "#/components/schemas/{model}"
PREFIX = "curbside/v1/{site}/{device}"
SITE = "curbside/v1/{site}"

# (channel, address, payload model, direction for the device, summary, MQTT bindings)
CHANNELS: list[tuple[str, str, type[BaseModel], str, str, dict[str, Any]]] = [
    ("status", f"{PREFIX}/status", Status, "send",
     "Birth on every connect; LWT and goodbye when offline.", {"qos": 1, "retain": True}),
    ("events", f"{PREFIX}/events", EventBatch, "send",
     "Audit, alarm and state events, one class per message, oldest first.",
     {"qos": 1, "retain": False}),
    ("telemetry", f"{PREFIX}/telemetry", EventBatch, "send",
     "Telemetry events; MQTT 5 message expiry set.", {"qos": 1, "retain": False}),
    ("state", f"{PREFIX}/state", StateSnapshot, "send",
     "Current snapshot, republished on every connection.", {"qos": 1, "retain": True}),
    ("cmd", f"{PREFIX}/cmd", CommandRequest, "receive",
     "Commands to the device. Retained requests are ignored.", {"qos": 1, "retain": False}),
    ("cmdResult", f"{PREFIX}/cmd/result", CommandReply, "send",
     "Replies for MQTT 3.1.1 clients; MQTT 5 replies go to the request's response topic.",
     {"qos": 1, "retain": False}),
    ("denylist", f"{SITE}/denylist", SignedDocument, "receive",
     "The site's signed denylist (typ curbside-denylist+jwt); newer versions only.",
     {"qos": 1, "retain": True}),
    ("trust", f"{SITE}/trust", SignedDocument, "receive",
     "The site's signed trust bundle (typ curbside-trust+jwt); newer versions only.",
     {"qos": 1, "retain": True}),
]


def schemas() -> dict[str, Any]:
    """JSON Schemas of every payload model, keyed by model name."""
    models = sorted({c[2] for c in CHANNELS}, key=lambda m: m.__name__)
    refs, top = models_json_schema([(m, "serialization") for m in models], ref_template=REF)
    found: dict[str, Any] = dict(top.get("$defs", {}))
    for (model, _mode), ref in refs.items():
        found.setdefault(model.__name__, ref)
    return dict(sorted(found.items()))


def build_document() -> dict[str, Any]:
    params = {"site": {"description": "device.site"}, "device": {"description": "device.id"}}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for name, address, model, action, summary, binding in CHANNELS:
        message = f"{name}Message"
        signed = model is SignedDocument
        messages[message] = {
            "name": message, "summary": summary,
            "contentType": "application/jose" if signed else "application/json",
            "payload": {"$ref": REF.format(model=model.__name__)},
            "bindings": {"mqtt": {"bindingVersion": "0.2.0"}},
        }
        used = {k: v for k, v in params.items() if "{" + k + "}" in address}
        channels[name] = {"address": address, "parameters": used,
                          "messages": {message: {"$ref": f"#/components/messages/{message}"}}}
        operations[f"{action}{name[0].upper()}{name[1:]}"] = {
            "action": action, "channel": {"$ref": f"#/channels/{name}"}, "summary": summary,
            "bindings": {"mqtt": {**binding, "bindingVersion": "0.2.0"}},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Curbside device MQTT interface", "version": __version__,
            "description": "What a Curbside agent publishes and accepts. Prose: "
                           "docs/mqtt-api.md. MQTT 5 publishes carry the user property "
                           "schema=1.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas()},
    }


def render() -> str:
    return json.dumps(build_document(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
