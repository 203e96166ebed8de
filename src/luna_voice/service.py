"""Assembly: settings → providers, browser host, bot manager, local room hub → one aiohttp application."""

from __future__ import annotations

import asyncio
import functools
import secrets
import signal
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from aiohttp import web

from luna_voice import logs
from luna_voice.api.errors import ApiError, AppRunner, json_errors, require_token
from luna_voice.api.models import SummonRequest
from luna_voice.api.participant import participant_routes
from luna_voice.api.port import SERVICE, EventStream, TranscriptDoc
from luna_voice.api.routes import routes
from luna_voice.bots import states as sc
from luna_voice.bots.host import ChromiumHost, PageHost, PageUrls
from luna_voice.bots.lifecycle import Bot, BotTimings
from luna_voice.bots.manager import BotManager, CapacityReached, Retention, RoomSetup, StillLeaving
from luna_voice.bots.pipeline import Pipeline
from luna_voice.bots.states import BotState
from luna_voice.bridge import protocol as bp
from luna_voice.config import Settings, secret
from luna_voice.conversation.addressing import AddressDetector, is_backchannel
from luna_voice.conversation.chunking import SentenceChunker
from luna_voice.conversation.core import Conversation, CoreConfig
from luna_voice.conversation.endpointing import EndpointConfig
from luna_voice.conversation.events import TurnChanged
from luna_voice.conversation.requests import RequestDetector, SayRefused
from luna_voice.events import Event, StateChanged
from luna_voice.hearing.vad import VoiceDetector
from luna_voice.metrics import Metrics
from luna_voice.providers.select import ProviderSet, select_providers
from luna_voice.rooms.local_rooms import LocalRooms
from luna_voice.rooms.rtk_api import RtkApi, RtkApiError
from luna_voice.usage import price
from luna_voice.webhooks import WebhookSender

log = structlog.get_logger(__name__)

AudioTap = Callable[[str, str, float, bytes], None]


CLOSE_TIMEOUT_S = 3.0
DISMISS_WAIT_S = 10.0


class Service(LocalRooms):
    """Implements the API's ``LunaService`` for bots running in this process."""

    def __init__(
        self,
        settings: Settings,
        providers: ProviderSet | None = None,
        host: PageHost | None = None,
        audio_tap: AudioTap | None = None,
        new_vad: Callable[[], VoiceDetector] | None = None,
        bot_tickets: Callable[[str], Awaitable[str]] | None = None,
    ) -> None:
        """``providers`` replaces the engines chosen from settings; ``audio_tap`` is called with every capture
        frame Python receives (room id, participant id, page stamp in ms, pcm); ``new_vad`` replaces the batched
        Silero per speaker (the profile's "before": Silero on the event loop) — the bench's hooks.
        ``bot_tickets(room_id)`` gets Luna's page a ticket into a local room whose hub is elsewhere (a bot machine
        asks its dispatcher)."""
        self.settings = settings
        self.bot_tickets = bot_tickets
        self.audio_tap = audio_tap
        self.new_vad = new_vad
        self.providers = providers or select_providers(settings)
        self.prices = self.providers.prices(settings.prices)
        self._open_local_rooms(settings)
        self.host = host or ChromiumHost(settings.chromium_path)
        self.urls = PageUrls(settings.bot_base_url or f"http://127.0.0.1:{settings.port}")
        s = settings
        self.manager = BotManager(
            host=self.host,
            max_bots=s.max_bots,
            timings=BotTimings(s.join_timeout_s, s.alone_timeout_s, s.max_duration_s, s.rejoin_max, s.rejoin_window_s),
            urls=self.urls,
            make_pipeline=self._make_pipeline,
            on_event=self._on_event,
            retention=Retention(s.ended_retention_s, s.ended_retention_count),
        )
        self._metrics = Metrics(lambda: (str(b.state) for b in self.manager.all()))
        self.webhooks = (
            WebhookSender(
                settings.webhook_url,
                secret(settings.webhook_secret) or "",
                registry=self._metrics.registry,
                max_queue=settings.webhook_queue,
                retry_for_s=settings.webhook_retry_for_s,
            )
            if settings.webhook_url
            else None
        )
        self.rtk = (
            RtkApi(
                account_id=settings.rtk_account_id or "",
                app_id=settings.rtk_app_id or "",
                api_token=secret(settings.rtk_api_token) or "",
                preset_name=settings.rtk_preset,
                base_url=settings.rtk_api_base,
                name=settings.bot_name,
                picture=settings.bot_picture,
            )
            if settings.rtk_configured
            else None
        )
        self.browser_error: str | None = None
        self._stopped = False
        # LUNA_RTK_PRESET as RealtimeKit has it: checked once at startup (None while checking)
        self.rtk_preset: dict[str, Any] | None = None
        self._preset_check: asyncio.Task[None] | None = None
        self.provider_problems: dict[str, str] = {}  # from the startup probe (``_probe_tts``)
        self._probe: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ LunaService
    async def summon(self, room_id: str, req: SummonRequest) -> tuple[dict[str, Any], bool]:
        backend = req.backend or self._default_backend()
        name = req.name or self.settings.bot_name
        options: dict[str, Any] = {"policy": req.policy or self.settings.turn_policy, "name": name}
        if backend == "local":
            hub = PageUrls(self.settings.local_room_url) if self.settings.local_room_url else self.urls
            if not (self.settings.local_rooms or self.settings.local_room_url):
                raise ApiError(400, "local_rooms_disabled", "backend 'local' is turned off (LUNA_LOCAL_ROOMS=false)")
            signal_url = hub.ws(f"/local/rooms/{room_id}/signal")
            ice = self.settings.local_ice
            own_hub = self.settings.local_room_url is None

            async def local_page() -> dict[str, Any]:  # every page opened (a rejoin too): a fresh single-use ticket
                if own_hub:
                    ticket: str | None = self.tickets.mint(room_id, "bot")
                else:  # the hub's service mints it; a hub that asks for none ignores it
                    ticket = await self.bot_tickets(room_id) if self.bot_tickets else None
                return {"roomId": room_id, "signalUrl": signal_url, "name": name, "iceFilter": ice, "ticket": ticket}

            async def setup() -> RoomSetup:
                return RoomSetup(local_page)
        else:
            options["minute_price"] = self.settings.prices.rtk_per_minute

            async def setup() -> RoomSetup:
                token, kick = await self._rtk_token(room_id, req)

                async def rtk_page() -> dict[str, Any]:
                    return {"authToken": token, "name": name}

                return RoomSetup(rtk_page, kick)

        try:
            bot, created = await self.manager.summon(room_id, backend=backend, options=options, setup=setup)
        except CapacityReached as exc:
            raise ApiError(503, "capacity_reached", str(exc), retry_after=30) from None
        except StillLeaving as exc:
            raise ApiError(409, "still_leaving", str(exc), retry_after=2) from None
        return bot.status(), created

    def status(self, room_id: str) -> dict[str, Any] | None:
        bot = self.manager.get(room_id)
        return bot.status() if bot is not None else None

    async def dismiss(self, room_id: str) -> dict[str, Any] | None:
        bot = self.manager.dismiss(room_id)
        if bot is None:
            return None
        await bot.wait_ended(DISMISS_WAIT_S)
        return bot.status()

    def watch(self, room_id: str, *, follow: bool) -> EventStream | None:
        return self.manager.watch(room_id, follow=follow)

    async def say(self, room_id: str, text: str, *, interrupt: bool) -> dict[str, Any]:
        bot = self.manager.get(room_id)
        if bot is None or not bot.state.live:
            raise ApiError(404, "not_found", f"Luna is not in room '{room_id}'")
        if bot.state is not BotState.JOINED:
            raise ApiError(409, "not_joined", f"Luna is {bot.state}; she can speak once she has joined")
        try:
            turn = bot.pipeline.say(text, interrupt=interrupt)
        except SayRefused as exc:
            raise ApiError(409, exc.code, str(exc)) from None
        return {"say_id": turn.id, "state": str(turn.state)}

    async def transcript(self, room_id: str) -> TranscriptDoc | None:
        bot = self.manager.get(room_id)
        if bot is None:
            return None
        record = bot.pipeline.core.transcript_record
        if record is None:
            raise ApiError(404, "transcript_disabled", "the meeting transcript is turned off (LUNA_TRANSCRIPT=false)")
        head = {"room_id": bot.room_id, "bot_id": bot.id, "state": str(bot.state)}
        to_wall = bot.created_at - bot.started  # the core's clock is monotonic; the document shows Unix seconds
        return TranscriptDoc({**head, **record.to_json(bot.started, to_wall)}, record.to_vtt(bot.started))

    def rooms(self) -> list[dict[str, Any]]:
        return [
            {"room_id": b.room_id, "bot_id": b.id, "backend": b.backend, "state": str(b.state), "sub_code": b.sub_code}
            for b in self.manager.all()
        ]

    def metrics(self) -> bytes:
        return self._metrics.render()

    async def bridge(self, bot_id: str, request: web.Request) -> web.StreamResponse:
        bot = self.manager.by_id(bot_id)
        if bot is None:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.close(code=bp.CLOSE_UNKNOWN_BOT, message=b"unknown bot")
            return ws
        return await bot.attach(request)

    # ------------------------------------------------------------------ assembly
    async def _rtk_token(self, meeting_id: str, req: SummonRequest) -> tuple[str, Callable[[], Awaitable[None]] | None]:
        """A participant token for Luna: the app's own (``auth_token``) or one we mint through the REST API."""
        if req.auth_token is not None:
            return req.auth_token.get_secret_value(), None
        if self.rtk is None:
            raise ApiError(
                400,
                "rtk_not_configured",
                "backend 'rtk' needs LUNA_RTK_ACCOUNT_ID, LUNA_RTK_APP_ID and LUNA_RTK_API_TOKEN, "
                "or an 'auth_token' in the request body",
            )
        rtk = self.rtk
        try:
            minted = await rtk.mint_token(meeting_id, secrets.token_hex(6))  # a new identity for each stay
        except RtkApiError as exc:
            raise ApiError(exc.http_status, exc.code, exc.message, retry_after=exc.retry_after) from None
        return minted.token, lambda: rtk.kick(meeting_id, minted)

    def _make_pipeline(self, bot: Bot) -> Pipeline:
        s = self.settings
        name = bot.options.get("name", s.bot_name)
        names = AddressDetector(name)
        core = Conversation(
            CoreConfig(
                room_id=bot.room_id,
                playback_rate=bp.PLAYBACK_RATE,
                bot_name=name,
                policy=bot.options.get("policy", s.turn_policy),
                follow_up_window_s=s.follow_up_window_s,
                endpoint=EndpointConfig(
                    end_of_speech_ms=s.end_of_speech_ms,
                    max_utterance_s=s.max_utterance_s,
                    preroll_ms=s.preroll_ms,
                    min_speech_ms=s.min_speech_ms,
                    semantic=s.turn_model,
                    candidate_ms=s.turn_candidate_ms,
                    reask_ms=s.turn_reask_ms,
                    reask_until_ms=s.turn_reask_until_ms,
                    confident_asks=s.turn_confident_asks,
                    complete_threshold=s.turn_complete_threshold,
                    confident_threshold=s.turn_confident_threshold,
                    likely_wait_ms=s.turn_likely_wait_ms,
                    max_wait_ms=s.turn_max_wait_ms,
                ),
                barge_in_min_ms=s.barge_in_min_ms,
                min_word_confidence=s.stt_min_confidence,
                continuation_wait_s=s.continuation_wait_s,
                duck_gain=10 ** (s.barge_in_duck_db / 20),
                duck_threshold=s.barge_in_duck_threshold,
                rate_limited_line=s.rate_limited_line,
                unmute_when_addressed=s.host_mute == "unmute_when_addressed",
                greeting=s.greeting,
                goodbye=s.goodbye,
                goodbye_zh=s.goodbye_zh,
                transcript_lines=s.transcript_max_lines if s.transcript else 0,
                transcribe_timeout_s=s.stt_timeout_s,
            ),
            is_addressed=names.is_addressed,
            is_backchannel=is_backchannel,
            new_chunker=SentenceChunker,
            price=lambda usage: price(usage, self.prices),
            find_request=RequestDetector(names.is_addressed, names.without_names),
        )
        names.present = core.participants.values()  # a sound-alike of her name that someone here carries is theirs
        return Pipeline(
            core,
            stt=self.providers.make_stt(),
            llm=self.providers.make_llm(),
            tts=self.providers.make_tts(),
            send_audio=bot.send_audio,
            clock=bot.clock,
            clear_playback=bot.clear_playback,
            publish=bot.publish,
            unmute=bot.unmute,
            leave=lambda reason: bot.request_end(sc.ASKED_TO_LEAVE, reason),
            set_playback_gain=bot.set_playback_gain,
            vad_threshold=s.vad_threshold,
            new_vad=self.new_vad,
            audio_tap=functools.partial(self.audio_tap, bot.room_id) if self.audio_tap is not None else None,
        )

    def _on_event(self, bot: Bot, event: Event) -> None:
        """Every event any bot publishes: metrics, the chat mirror, webhooks, and the end of a stay."""
        self._metrics.observe(event)
        if self.settings.chat_mirror and (text := _mirrored_text(event)):
            bot.send_chat(text)
        if self.webhooks is None:
            return
        self.webhooks.observe(event, room_id=bot.room_id, bot_id=bot.id)
        record = bot.pipeline.core.transcript_record
        if isinstance(event, StateChanged) and not BotState(event.state).live and record is not None:
            data = {"lines": len(record), "transcript": record.to_json(bot.started, bot.created_at - bot.started)}
            self.webhooks.submit("transcript.ready", data, room_id=bot.room_id, bot_id=bot.id)

    def readiness(self) -> dict[str, Any]:
        browser = self.host.ready
        problems = dict(self.provider_problems)  # the startup probe's findings, then what live bots see now
        for bot in self.manager.live():
            problems.update(bot.pipeline.provider_problems())
        report = {
            "ready": browser,
            "browser": "running" if browser else (self.browser_error or "not started"),
            "providers": self.providers.names,
            "provider_problems": problems,
            "offline": self.providers.offline,
            "bots": {"live": len(self.manager.live()), "max": self.settings.max_bots},
        }
        if self.rtk is not None:
            preset = self.rtk_preset or {"name": self.settings.rtk_preset, "status": "checking"}
            report["rtk_preset"] = preset
            report["ready"] = browser and preset["status"] != "unusable"
        return report

    async def _check_rtk_preset(self, rtk: RtkApi) -> None:
        """Say at startup, not at the first summon, that LUNA_RTK_PRESET cannot work (log and /readyz)."""
        name = self.settings.rtk_preset
        try:
            problem = await rtk.check_preset()
        except RtkApiError as exc:  # RTK unreachable or our token refused: summons will say so too
            self.rtk_preset = {"name": name, "status": "unchecked", "reason": exc.message}
            log.warning("rtk.preset_unchecked", preset=name, error=exc.message)
            return
        if problem is None:
            self.rtk_preset = {"name": name, "status": "ok"}
            log.info("rtk.preset_ok", preset=name)
        else:
            self.rtk_preset = {"name": name, "status": "unusable", "reason": problem}
            log.error("rtk.preset_unusable", preset=name, reason=problem)

    async def _on_startup(self, _app: web.Application) -> None:
        log.info("providers", **self.providers.names, offline=self.providers.offline)
        self._log_access()
        if self.webhooks is not None:
            self.webhooks.start()
        for note in self.providers.notes:
            log.warning("providers.note", note=note)
        if self.rtk is not None:  # in the background: the API answers (and /readyz says "checking") meanwhile
            self._preset_check = asyncio.create_task(self._check_rtk_preset(self.rtk))
        self._probe = asyncio.create_task(self._probe_tts())
        try:
            await self.host.start()
        except Exception as exc:  # the API still answers; /readyz says why bots cannot start
            self.browser_error = f"{type(exc).__name__}: {exc}"
            log.error("chromium.failed", error=self.browser_error)

    def _log_access(self) -> None:
        s = self.settings
        if s.api_token:
            log.info(
                "access",
                api="Authorization: Bearer LUNA_API_TOKEN",
                local_rooms="join with a ticket from POST /local/rooms/{id}/tickets" if s.local_rooms else "off",
            )
        else:
            log.warning(
                "access.open",
                note="LUNA_API_TOKEN is not set: anyone who reaches this port can summon Luna"
                + (" and join the local demo rooms without a ticket" if s.local_rooms else ""),
            )

    async def _probe_tts(self) -> None:
        """Open the TTS service once at startup, so a refused key or an unreachable service shows in /readyz
        before the first bot needs it (the Azure provider finds out within about a second)."""
        if self.providers.names["tts"] != "azure":
            return
        tts = self.providers.make_tts()
        try:
            await tts.warm()
            if isinstance(problem := getattr(tts, "problem", None), str):
                self.provider_problems["tts"] = problem
                log.error("providers.unhealthy", provider=tts.name, problem=problem)
        finally:
            await tts.aclose()

    async def stop(self) -> None:
        """Every bot leaves its room, event streams and local-room sockets close saying why, then Chromium exits.

        Call before the HTTP server stops; bounded well inside fly.toml's kill_timeout. Safe to call twice.
        """
        if self._stopped:
            return
        self._stopped = True
        reason = "service stopping"
        await self.manager.shutdown(reason)
        await self.hub.close_all(reason)

    async def _on_shutdown(self, _app: web.Application) -> None:
        if self._probe is not None:
            self._probe.cancel()
        await self.stop()
        if self._preset_check is not None:
            self._preset_check.cancel()
        if self.webhooks is not None:  # after the bots left: their last states and transcripts go out
            await self.webhooks.aclose()
        if self.rtk is not None:
            try:
                await asyncio.wait_for(self.rtk.aclose(), CLOSE_TIMEOUT_S)
            except Exception as exc:
                log.warning("service.close_failed", error=str(exc) or type(exc).__name__)

    def app(self) -> web.Application:
        token = secret(self.settings.api_token)
        app = web.Application(middlewares=[json_errors, require_token(token)], client_max_size=1024**2)
        app[SERVICE] = self
        app.add_routes(routes)
        app.add_routes(participant_routes)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app


def _mirrored_text(event: Event) -> str | None:
    """What the chat mirror posts for an event: the words of a finished turn the room heard, or None."""
    if not isinstance(event, TurnChanged) or not event.state.terminal or not event.turn["spoken_text"]:
        return None
    return str(event.turn["spoken_text"]) + ("…" if event.turn["interrupted"] else "")


class Servable(Protocol):
    settings: Settings

    def app(self) -> web.Application: ...

    async def stop(self) -> None: ...


def assemble(settings: Settings) -> Servable:
    """The all-in-one service, or with ``LUNA_BOT_HOST=fly`` the dispatcher (``scale/service.py``)."""
    from luna_voice.scale.settings import FlySettings

    fly = FlySettings()
    if fly.bot_host == "fly":
        from luna_voice.scale.service import DispatcherService

        return DispatcherService(settings, fly)
    return Service(settings)


async def _run(service: Servable) -> None:
    s = service.settings
    # Streams and sockets are closed by service.stop(); the runner only waits briefly for in-flight requests.
    runner = AppRunner(service.app(), handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, s.host, s.port).start()
    public = s.public_url or f"http://{'127.0.0.1' if s.host in ('0.0.0.0', '::') else s.host}:{s.port}"
    print(f"\n  Luna voice is up. Demo room: {public}/demo/rooms/demo\n", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("service.stopping")
    # Bots leave their rooms while the bridge sockets still work, then streams and local-room sockets close.
    await service.stop()
    await runner.cleanup()


def serve(host: str | None = None, port: int | None = None) -> None:
    settings = Settings()
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    logs.configure(settings.log_level, json=settings.log_json)
    asyncio.run(_run(assemble(settings)))
