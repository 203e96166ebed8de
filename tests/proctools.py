"""Processes under test, read from /proc: descendants, Chromium's browser and renderer processes, open FDs."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import luna_voice


def _children(task: Path) -> list[int]:
    """A thread's child processes; none once the thread has gone (threads come and go while this reads)."""
    try:
        return [int(c) for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def descendants(pid: int) -> set[int]:
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            for child in _children(task):
                if child not in found:
                    found.add(child)
                    frontier.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def cmdline(pid: int) -> str:
    """The command line as one string (Chromium's helpers rewrite theirs into a single space-joined argument)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
    except FileNotFoundError:
        return ""


def chromium_browsers(under: int | None = None) -> set[int]:
    """Chromium browser (main) processes below ``under`` (default: this process)."""
    pids = descendants(under or os.getpid())
    return {
        p for p in pids if "chrom" in Path(cmdline(p).split(" ")[0]).name and "--type=" not in cmdline(p) and alive(p)
    }


def renderers(browser: int) -> set[int]:
    return {p for p in descendants(browser) if "--type=renderer" in cmdline(p) and alive(p)}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


SECRETS = ("OPENAI_API_KEY", "AZURE_SPEECH_KEY", "LUNA_BOTSESSION_URL", "LUNA_LLM_API_KEY", "LUNA_RTK_API_TOKEN")


async def start_serve(port: int, cwd: Path) -> asyncio.subprocess.Process:
    """``luna-voice serve`` as its own process on ``port``, running these sources, with no provider secrets."""
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    env.update(LUNA_LOCAL_ICE="loopback", HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(luna_voice.__file__).parents[1]))
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("luna-voice")),
        "serve",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
    )
