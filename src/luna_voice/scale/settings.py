"""The dispatcher's settings (``LUNA_BOT_HOST`` and ``LUNA_FLY_*``), apart from the service's own.

Fly sets ``FLY_APP_NAME``, ``FLY_REGION`` and ``FLY_IMAGE_REF`` on every machine; they are the defaults here, so a
deployed dispatcher needs only the bots app and a token.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from luna_voice.scale.machines import PUBLIC_BASE


class FlySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LUNA_FLY_", env_file=".env", extra="ignore")

    bot_host: Literal["local", "fly"] = Field(default="local", validation_alias=AliasChoices("LUNA_BOT_HOST"))
    api_token: SecretStr | None = Field(default=None, description="Machines API token for the bots app only.")
    api_base: str = PUBLIC_BASE
    app: str | None = Field(default=None, description="The Fly app that holds the bot machines.")
    image: str | None = Field(default=None, validation_alias=AliasChoices("LUNA_FLY_IMAGE", "FLY_IMAGE_REF"))
    region: str | None = Field(default=None, description="Force this region; else the request's, else our own.")
    own_region: str = Field(default="", validation_alias=AliasChoices("FLY_REGION"))
    own_app: str = Field(default="", validation_alias=AliasChoices("FLY_APP_NAME"))
    dispatcher_url: str | None = None
    local_room_url: str | None = Field(
        default=None, description="Where bot machines find the local demo room's hub; default the dispatcher."
    )
    pool_size: int = Field(default=2, ge=0)
    max_machines: int = Field(default=20, ge=1)
    size: str = "performance-1x"
    bot_port: int = 8080
    heartbeat_timeout_s: float = Field(default=5.0, gt=0)
    boot_timeout_s: float = Field(default=90.0, gt=0)

    def problems(self) -> list[str]:
        """What a dispatcher is missing to start, in words an operator can act on."""
        out = []
        if self.api_token is None:
            out.append("LUNA_FLY_API_TOKEN (a deploy token of the bots app)")
        if not self.app:
            out.append("LUNA_FLY_APP (the bots app)")
        if not self.image:
            out.append("LUNA_FLY_IMAGE (set by Fly as FLY_IMAGE_REF on a deployed machine)")
        if not (self.dispatcher_url or self.own_app):
            out.append("LUNA_FLY_DISPATCHER_URL (default from FLY_APP_NAME on Fly)")
        return out
