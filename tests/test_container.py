"""The image and its deployment: Dockerfile lint and user, fly.toml against the code, Chromium's sandbox."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import pytest

from luna_voice.api.routes import routes
from luna_voice.config import Settings
from luna_voice.sandbox import sandbox_decision
from luna_voice.scale.fleet import FleetConfig
from luna_voice.scale.settings import FlySettings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
FLY = tomllib.loads((ROOT / "fly.toml").read_text())
NOBODY = 65534


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(os.sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_as_a_numeric_non_root_user_after_the_last_build_step():
    steps = instructions()
    users = [i for i, (op, _) in enumerate(steps) if op == "USER"]
    assert users, "the image must not run as root"
    last_user = steps[users[-1]][1].split(":")[0]
    assert last_user.isdigit() and int(last_user) != 0
    last_run = max(i for i, (op, _) in enumerate(steps) if op == "RUN")
    assert users[-1] > last_run
    assert re.search(rf"useradd[^&]*--uid {last_user}\b", DOCKERFILE), "the user must exist in the image"


def test_the_bot_machines_command_resolves_in_the_image():
    """The dispatcher starts bot machines with ``luna-voice bot``: the venv's bin must be on the image's PATH."""
    workdir = next(args for op, args in instructions() if op == "WORKDIR")
    env = " ".join(args for op, args in instructions() if op == "ENV")
    path = re.search(r"PATH=(\S+)", env)
    assert path and f"{workdir}/.venv/bin" in path.group(1).split(":")
    assert FleetConfig.bot_cmd[0] == "luna-voice"


def test_dockerignore_keeps_every_copied_path():
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip()]
    for op, args in instructions():
        if op != "COPY":
            continue
        for src in args.split()[:-1]:
            hit = [p for p in ignored if fnmatch.fnmatch(src.rstrip("/"), p.rstrip("/"))]
            assert not hit, f"COPY {src} is excluded by .dockerignore {hit}"
            assert (ROOT / src).exists(), f"COPY {src}: no such path"


def test_fly_toml_matches_the_code():
    env = FLY["env"]
    known = {f"LUNA_{name.upper()}" for name in Settings.model_fields}
    known |= {f"LUNA_FLY_{name.upper()}" for name in FlySettings.model_fields} | {"LUNA_BOT_HOST"}
    for key in env:
        assert key in known, f"fly.toml sets unknown {key}"
    parsed = FlySettings(
        _env_file=None, **{k[len("LUNA_FLY_") :].lower(): v for k, v in env.items() if k.startswith("LUNA_FLY_")}
    )
    assert parsed.max_machines >= parsed.pool_size
    assert env.get("LUNA_BOT_HOST") in (None, "local", "fly")
    leaked = [k for k in env if any(word in k for word in ("TOKEN", "KEY", "SECRET"))]
    assert not leaked, f"secrets belong in `fly secrets`, not fly.toml: {leaked}"
    service = FLY["http_service"]
    assert str(service["internal_port"]) == env["LUNA_PORT"]
    paths = {getattr(r, "path", None) for r in routes}
    for check in service["checks"]:
        assert check["path"] in paths, f"health check {check['path']} is not a route"
    assert FLY["kill_signal"] == "SIGTERM"


def test_sandbox_rules():
    yes = lambda: True  # noqa: E731
    no = lambda: False  # noqa: E731
    assert sandbox_decision({}, 0, yes) == (False, "running as root (Chromium refuses its sandbox as root)")
    assert sandbox_decision({}, 10001, yes)[0] is True
    assert sandbox_decision({}, 10001, no) == (False, "user namespaces are not available to this user")
    assert sandbox_decision({"LUNA_CHROMIUM_SANDBOX": "off"}, 10001, yes)[0] is False
    assert sandbox_decision({"LUNA_CHROMIUM_SANDBOX": "on"}, 0, no)[0] is True


def _as_nobody(*cmd: str) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "env", "-i", "PATH=/usr/bin:/bin",
            "HOME=/tmp", *cmd]  # fmt: skip


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def _tree_cmdlines(root: int) -> dict[int, bytes]:
    """Command lines of a process tree (Chromium's children rewrite argv into one string, so keep it whole)."""
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        todo += _children(pid)
    return out


@pytest.mark.browser
def test_chromium_keeps_its_sandbox_as_a_non_root_user(tmp_path: Path):
    """What the image's user gets: our flags without --no-sandbox, and renderers in their own user namespace."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root to switch to an unprivileged user")
    from luna_voice.bots.host import CHROMIUM_ARGS

    probe = subprocess.run(_as_nobody("unshare", "--user", "true"), capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this kernel gives unprivileged users no user namespaces: Chromium runs --no-sandbox here")
    sandboxed, why = sandbox_decision({}, NOBODY, lambda: probe.returncode == 0)
    assert sandboxed, why
    args = [a for a in CHROMIUM_ARGS if a != "--no-sandbox"]
    profile = tmp_path / "profile"
    profile.mkdir()
    os.chown(profile, NOBODY, NOBODY)
    cmd = _as_nobody(
        "/usr/lib/chromium/chromium", "--headless", f"--user-data-dir={profile}", "--remote-debugging-port=0",
        *args, "data:text/html,<p>sandboxed</p>",
    )  # fmt: skip
    browser = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert browser.stderr is not None
        for line in browser.stderr:  # the browser is up once DevTools listens; its renderer exists by then
            if "DevTools listening" in line:
                break
        else:
            pytest.fail("Chromium exited without its sandbox flag")
        threading.Thread(target=browser.stderr.read, daemon=True).start()  # keep the pipe drained
        deadline = time.monotonic() + 15
        while True:  # the first renderer appears as the page loads: wait for it (bounded)
            cmdlines = _tree_cmdlines(browser.pid)
            if any(b"--type=renderer" in c for c in cmdlines.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        chromium = next(p for p, c in cmdlines.items() if b"--type=" not in c)
        renderers = [p for p, c in cmdlines.items() if b"--type=renderer" in c]
        assert renderers and not any(b"--no-sandbox" in c for c in cmdlines.values())
        user_ns = os.readlink(f"/proc/{chromium}/ns/user")
        assert all(os.readlink(f"/proc/{r}/ns/user") != user_ns for r in renderers)
    finally:
        os.killpg(browser.pid, 9)
        browser.wait()
