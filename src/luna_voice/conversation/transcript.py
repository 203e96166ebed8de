"""The meeting transcript: every line Luna heard and said during one stay, bounded, as JSON or WebVTT.

It is a by-product of listening: the core adds a line for each transcribed utterance (skipped ones too) and for
each reply once she has finished it, with only the part the room heard. Lines arrive in the order they were
*finished*, so the outputs sort them by start time. The oldest lines go first when the bound is reached, and the
output says how many were dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Line:
    speaker_id: str
    speaker: str
    start: float  # the core's clock (monotonic seconds)
    end: float
    text: str
    language: str | None = None
    luna: bool = False  # one of Luna's own lines
    kind: str = "utterance"  # Luna's lines: reply | greeting | say | goodbye
    interrupted: bool = False


_FIELDS = {f.name for f in fields(Line)}


class MeetingTranscript:
    def __init__(self, max_lines: int) -> None:
        self.max_lines = max_lines
        self._lines: deque[Line] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._lines)

    def add(self, line: Line) -> None:
        self._lines.append(line)
        while len(self._lines) > self.max_lines:
            self._lines.popleft()
            self.dropped += 1

    def lines(self) -> list[Line]:
        return sorted(self._lines, key=lambda line: (line.start, line.end))

    def to_json(self, origin: float, to_wall: float) -> dict[str, Any]:
        """``origin`` (when the stay began, core clock) gives each line an offset a player can seek to;
        ``to_wall`` turns the core's clock into Unix seconds for ``start`` and ``end``."""
        lines = []
        for line in self.lines():
            item = asdict(line)
            item["start"], item["end"] = round(line.start + to_wall, 3), round(line.end + to_wall, 3)
            item["offset_s"] = round(line.start - origin, 3)
            lines.append(item)
        started = round(origin + to_wall, 3)
        return {"started_at": started, "lines": lines, "dropped": self.dropped, "max_lines": self.max_lines}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> tuple[MeetingTranscript, float]:
        """``to_json``'s output back as a transcript on the Unix-seconds clock, with its origin: a dispatcher renders
        WebVTT from the JSON a bot machine handed over, with the same ``to_vtt``. Raises ValueError if malformed."""
        try:
            record = cls(int(doc["max_lines"]))
            record.dropped = int(doc["dropped"])
            for item in doc["lines"]:
                line = Line(**{k: v for k, v in item.items() if k in _FIELDS})
                record._lines.append(
                    replace(
                        line,
                        start=float(line.start),
                        end=float(line.end),
                        speaker=str(line.speaker),
                        text=str(line.text),
                    )
                )
            return record, float(doc["started_at"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a transcript document: {exc}") from None

    def to_vtt(self, origin: float) -> str:
        """WebVTT with one cue per line, the speaker in a voice tag (``<v Alice>``)."""
        out = ["WEBVTT", ""]
        for n, line in enumerate(self.lines(), 1):
            start = max(0.0, line.start - origin)
            end = max(start + 0.001, line.end - origin)
            speaker = _escape(line.speaker)
            text = _escape(line.text) + ("…" if line.interrupted else "")
            out += [str(n), f"{_timestamp(start)} --> {_timestamp(end)}", f"<v {speaker}>{text}", ""]
        return "\n".join(out)


def _escape(text: str) -> str:
    """WebVTT cue text: ``&``, ``<`` and ``>`` must be escaped, and a blank line would end the cue."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.split())


def _timestamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"
