"""Processes under test, read from /proc: descendants, Chromium's browser and renderer processes, open FDs."""

from __future__ import annotations

import os
from pathlib import Path


def descendants(pid: int) -> set[int]:
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = (task / "children").read_text().split() if (task / "children").exists() else []
            for child in map(int, children):
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
