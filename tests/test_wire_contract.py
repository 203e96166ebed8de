"""One source for the bridge's wire contract: the page's constants are generated from bridge/protocol.py, and
no page script keeps a private copy of a rate or an offset."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from luna_voice.bridge import protocol as bp

BOT_PAGE = Path(__file__).resolve().parents[1] / "bot_page"
GENERATED = BOT_PAGE / "protocol.js"


def _exports(js: str) -> dict[str, float]:
    return {name: float(value) for name, value in re.findall(r"export const (\w+) = ([\d.]+);", js)}


def test_the_page_copy_is_generated_from_the_python_definition() -> None:
    assert GENERATED.read_text() == bp.javascript(), (
        "bot_page/protocol.js is stale: run  python -m luna_voice.bridge.protocol > bot_page/protocol.js"
    )


def test_the_page_offsets_read_a_frame_python_wrote() -> None:
    js = _exports(GENERATED.read_text())
    frame = bp.encode_audio(bp.KIND_PLAYBACK, 513, 2**32 - 2, 1234.5, b"\x01\x02")
    assert frame[int(js["OFFSET_VERSION"])] == bp.VERSION == js["VERSION"]
    assert frame[int(js["OFFSET_KIND"])] == js["KIND_PLAYBACK"]
    assert struct.unpack_from("<H", frame, int(js["OFFSET_PARTICIPANT"]))[0] == 513
    assert struct.unpack_from("<I", frame, int(js["OFFSET_SEQ"]))[0] == 2**32 - 2
    assert struct.unpack_from("<d", frame, int(js["OFFSET_TIMESTAMP"]))[0] == 1234.5
    assert frame[int(js["HEADER_BYTES"]) :] == b"\x01\x02"
    assert (js["CAPTURE_RATE"], js["PLAYBACK_RATE"]) == (bp.CAPTURE_RATE, bp.PLAYBACK_RATE)
    assert js["CAPTURE_FRAME_SAMPLES"] == bp.CAPTURE_RATE * bp.FRAME_MS / 1000


def _code(path: Path) -> str:
    """A script without its comments (prose may name the rates)."""
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def _page_scripts() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(BOT_PAGE):
        dirs[:] = [d for d in dirs if d not in ("node_modules", "vendor")]
        found += [Path(folder) / f for f in files if f.endswith(".js")]
    return [p for p in found if p != GENERATED]


def test_no_page_script_keeps_its_own_copy_of_the_contract() -> None:
    scripts = _page_scripts()
    assert {"bot.js", "demo.js", "capture-worklet.js"} <= {p.name for p in scripts}
    rates = re.compile(r"\b(16_?000|48_?000|320)\b")
    copies = {f"{p.relative_to(BOT_PAGE)}: {m.group(0)}" for p in scripts for m in rates.finditer(_code(p))}
    # the socket worker builds and reads the frames: every header access goes through the generated offsets
    offsets = re.compile(r"\b[gs]et(Uint|Int|Float)\d+\(\s*\d")
    framers = [BOT_PAGE / "bot.js", BOT_PAGE / "lib/socket-worker.js"]
    copies |= {f"{p.relative_to(BOT_PAGE)}: {m.group(0)}" for p in framers for m in offsets.finditer(_code(p))}
    assert not copies, f"use bot_page/protocol.js instead: {sorted(copies)}"
