"""Request bodies of the control API, validated by pydantic (the same models document the API)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from luna_voice.conversation.policy import PolicyName

ROOM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # use with fullmatch
MAX_SAY_CHARS = 1000  # about a minute of speech; longer texts belong in the chat


class SummonRequest(BaseModel):
    """Body of ``POST /rooms/{room_id}/luna`` (all fields optional; an empty body is fine)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "rtk"] | None = Field(
        default=None, description="Room backend; default 'rtk' when RTK credentials are configured, else 'local'."
    )
    auth_token: SecretStr | None = Field(
        default=None, description="RTK participant token minted by the app's backend (skips our own minting)."
    )
    policy: PolicyName | None = Field(default=None, description="When Luna answers; default from LUNA_TURN_POLICY.")
    name: str | None = Field(default=None, min_length=1, max_length=64, description="Luna's display name.")


class SayRequest(BaseModel):
    """Body of ``POST /rooms/{room_id}/luna/say``."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_SAY_CHARS, description="What Luna says, in her voice.")
    interrupt: bool = Field(
        default=False, description="Cut what she is saying now (as a barge-in does) instead of queueing after it."
    )

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is blank")
        return text.strip()
