"""The OpenAPI document (``GET /openapi.json``); request bodies come from the same pydantic models that validate."""

from __future__ import annotations

from typing import Any

from luna_voice.api.models import ROOM_ID, SayRequest, SummonRequest

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_STATUS = {
    "type": "object",
    "description": "A bot's status; see the README's API section for every field.",
    "required": ["room_id", "bot_id", "backend", "state", "sub_code", "participants", "turns", "usage"],
    "properties": {
        "room_id": {"type": "string"},
        "bot_id": {"type": "string"},
        "backend": {"type": "string", "enum": ["local", "rtk"]},
        "state": {
            "type": "string",
            "enum": ["starting", "joining", "joined", "reconnecting", "leaving", "ended", "failed"],
        },
        "sub_code": {"type": ["string", "null"], "description": "why it ended; an open set"},
        "reason": {"type": ["string", "null"]},
        "participants": {"type": "array", "items": {"type": "object"}},
        "turns": {"type": "array", "items": {"type": "object"}},
        "usage": {"type": "object"},
        "cost_usd": {"type": "number"},
    },
}
_SAY_ACCEPTED = {
    "type": "object",
    "required": ["say_id", "state"],
    "properties": {"say_id": {"type": "string"}, "state": {"type": "string", "enum": ["thinking", "queued"]}},
}
_ROOM_ID = {
    "name": "room_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{ROOM_ID.pattern}$"},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _json({"$ref": "#/components/schemas/Error"}, "error") for code in codes}


def document() -> dict[str, Any]:
    status_ref = {"$ref": "#/components/schemas/BotStatus"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Luna voice", "version": "0.1.0"},
        "paths": {
            "/rooms/{room_id}/luna": {
                "parameters": [_ROOM_ID],
                "post": {
                    "summary": "Summon Luna into a room (idempotent per room)",
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SummonRequest"}}},
                    },
                    "responses": {
                        "201": _json(status_ref, "a new bot"),
                        "200": _json(status_ref, "the bot already live in this room"),
                        **_errors(400, 404, 413, 415, 502, 503),
                    },
                },
                "get": {"summary": "Status", "responses": {"200": _json(status_ref, "status"), **_errors(400, 404)}},
                "delete": {
                    "summary": "Dismiss Luna",
                    "responses": {"200": _json(status_ref, "final status"), **_errors(400, 404)},
                },
            },
            "/rooms/{room_id}/luna/events": {
                "parameters": [_ROOM_ID],
                "get": {
                    "summary": "Server-sent events: status, state, participants, turn, speaking, muted",
                    "responses": {"200": {"description": "text/event-stream"}, **_errors(400, 404)},
                },
            },
            "/rooms/{room_id}/luna/say": {
                "parameters": [_ROOM_ID],
                "post": {
                    "summary": "Luna says a text, queued after what she is saying or interrupting it",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SayRequest"}}},
                    },
                    "responses": {
                        "202": _json(_SAY_ACCEPTED, "accepted; follow speak.* events with this say_id"),
                        **_errors(400, 404, 409, 413, 415),
                    },
                },
            },
            "/rooms/{room_id}/luna/transcript": {
                "parameters": [
                    _ROOM_ID,
                    {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "vtt"]}},
                ],
                "get": {
                    "summary": "The meeting transcript of Luna's latest stay (JSON, or WebVTT with Accept: text/vtt)",
                    "responses": {
                        "200": {
                            "description": "the transcript",
                            "content": {"application/json": {"schema": {"type": "object"}}, "text/vtt": {}},
                        },
                        **_errors(400, 404),
                    },
                },
            },
            "/rooms": {"get": {"summary": "Rooms and their bots", "responses": {"200": {"description": "list"}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness, active providers and (with RTK credentials) whether the RTK preset can work",
                    "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (needs the API token when one is set)",
                    "responses": {"200": {"description": "text"}, **_errors(401)},
                }
            },
            "/local/rooms/{room_id}/tickets": {
                "parameters": [_ROOM_ID],
                "post": {
                    "summary": "A single-use 60 s ticket for one page to join the local room (in its join message)",
                    "responses": {
                        "201": _json(
                            {
                                "type": "object",
                                "properties": {"ticket": {"type": "string"}, "expires_in_s": {"type": "number"}},
                            },
                            "the ticket",
                        ),
                        **_errors(400, 401, 404),
                    },
                },
            },
            "/local/rooms/{room_id}/participants": {
                "parameters": [_ROOM_ID],
                "get": {
                    "summary": "Who is in the local room",
                    "responses": {"200": {"description": "participants"}, **_errors(400, 401, 404)},
                },
            },
        },
        "components": {
            "schemas": {
                "SummonRequest": SummonRequest.model_json_schema(),
                "SayRequest": SayRequest.model_json_schema(),
                "BotStatus": _STATUS,
                "Error": _ERROR,
            }
        },
    }
