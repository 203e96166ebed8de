"""Whether Chromium can keep its sandbox here, decided once per process.

Chromium's Linux sandbox needs unprivileged user namespaces, and Chromium refuses to run as root without
``--no-sandbox``. So: sandboxed when not root and ``unshare --user`` works (a Fly Machine's VM, a plain Linux
host, the Docker image's non-root user on a kernel that allows it); ``--no-sandbox`` as root (CI and the tests run
as root) or where user namespaces are blocked (Docker's default seccomp profile on some hosts).
``LUNA_CHROMIUM_SANDBOX=on|off`` overrides the probe.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)


def userns_available() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        return subprocess.run([unshare, "--user", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def sandbox_decision(
    env: Mapping[str, str], euid: int, probe: Callable[[], bool] = userns_available
) -> tuple[bool, str]:
    """(sandboxed, why)."""
    choice = env.get("LUNA_CHROMIUM_SANDBOX", "auto").strip().lower()
    if choice in ("off", "false", "0"):
        return False, "LUNA_CHROMIUM_SANDBOX=off"
    if choice in ("on", "true", "1"):
        return True, "LUNA_CHROMIUM_SANDBOX=on"
    if euid == 0:
        return False, "running as root (Chromium refuses its sandbox as root)"
    if not probe():
        return False, "user namespaces are not available to this user"
    return True, "not root, user namespaces available"


@functools.cache
def chromium_sandbox_flags() -> tuple[str, ...]:
    sandboxed, why = sandbox_decision(os.environ, os.geteuid())
    log.info("chromium.sandbox", sandboxed=sandboxed, why=why)
    return () if sandboxed else ("--no-sandbox",)
