"""Bot lifecycle states and the sub-codes that say why a bot ended.

``starting → joining → joined ⇄ reconnecting → leaving → ended``, or ``failed`` from anywhere. Sub-codes are an
open set (new ones may appear); clients should show unknown ones as they are rather than treat them as an enum.
"""

from __future__ import annotations

from enum import StrEnum


class BotState(StrEnum):
    STARTING = "starting"
    JOINING = "joining"
    JOINED = "joined"
    RECONNECTING = "reconnecting"
    LEAVING = "leaving"
    ENDED = "ended"
    FAILED = "failed"

    @property
    def live(self) -> bool:
        return self not in (BotState.ENDED, BotState.FAILED)


# Why a bot ended (sub_code of ``ended``/``failed``).
DISMISSED = "dismissed"
ASKED_TO_LEAVE = "asked_to_leave"  # someone in the room said "Luna, you can leave"
ROOM_ENDED = "room_ended"
KICKED = "kicked"
REJECTED = "rejected"
WAITLISTED = "waitlisted"
ALONE_TIMEOUT = "alone_timeout"
MAX_DURATION = "max_duration"
JOIN_FAILED = "join_failed"
JOIN_TIMEOUT = "join_timeout"
CRASHED = "crashed"
DISCONNECTED = "disconnected"  # the room connection was lost and could not be re-established
SHUTDOWN = "shutdown"

# Ends that are failures (state ``failed``); every other sub-code ends in ``ended``.
FAILURES = frozenset({JOIN_FAILED, JOIN_TIMEOUT, CRASHED, REJECTED, WAITLISTED, DISCONNECTED})
