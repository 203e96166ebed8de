"""Request bodies of the control API, validated by pydantic (the same models document the API)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from luna_voice.conversation.policy import PolicyName

ROOM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # use with fullmatch


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
