"""``python -m bench [profile|pacing] [--quick] [--out …]``: measure Luna voice against floors from the same run,
print the tables, write the JSON; ``profile`` instead breaks one bot's CPU and memory into its parts, before and
after cuts, and ``pacing`` shows how evenly each way of producing a track reaches WebRTC's encoder.
Browsers talk on 127.0.0.1 only: as root the bench re-runs itself in a network namespace that holds nothing but
``lo``; otherwise ICE is filtered to 127.0.0.1 (it always is, too)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the modules load after isolate() has re-run the bench in its namespace
    from bench.harness import Rig, Running
    from bench.instant import ReplyAudio
    from bench.scenarios import Plan

os.environ["HF_HUB_OFFLINE"] = "1"

_ISOLATED = "LUNA_BENCH_NETNS"


def _interfaces() -> set[str]:
    """Interfaces of this process's network namespace (/proc/net/dev is per namespace; /sys/class/net is not)."""
    with open("/proc/net/dev") as f:
        return {line.split(":")[0].strip() for line in f.readlines()[2:]}


def isolate() -> str:
    """Re-exec inside ``unshare -n`` when possible; say how traffic is kept on loopback."""
    if _interfaces() <= {"lo"}:
        return "network namespace with only lo" if os.environ.get(_ISOLATED) else "no interface but lo"
    usable = os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip")
    if usable and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        script = 'ip link set lo up && exec "$0" -m bench "$@"'
        env = {**os.environ, _ISOLATED: "1"}
        os.execvpe("unshare", ["unshare", "-n", "bash", "-c", script, sys.executable, *sys.argv[1:]], env)
    return "ICE filtered to 127.0.0.1 (no network namespace available)"


def _output(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()


def machine(isolation: str) -> dict[str, Any]:
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    from bench.harness import CHROMIUM

    chromium = next((line for line in _output(str(CHROMIUM), "--version").splitlines() if "Chromium" in line), "?")
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024**2, 1),
        "cpu": platform.processor() or platform.machine(),
        "chromium": chromium,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _output("git", "rev-parse", "--short", "HEAD"),
        "isolation": isolation,
    }


async def run(
    quick: bool,
    isolation: str,
    only: set[str] | None = None,
    compare: bool = False,
    bots: tuple[int, ...] | None = None,
    receiver_stamps: bool = False,
) -> dict[str, Any]:
    """The scenarios against one service; with ``compare``, against a fresh service per end of the profile's
    ladder in turn (before and after the cuts, each with its own floor)."""
    from bench import profile
    from bench import scenarios as sc
    from bench.harness import FrameStamps, Rig
    from bench.instant import ReplyAudio
    from luna_voice import logs

    logs.configure("warning")
    plan = sc.Plan.make(quick)
    if bots:
        plan = dataclasses.replace(plan, scale=bots)
    if receiver_stamps:
        plan = dataclasses.replace(plan, frames=FrameStamps.ALL)
    audio = ReplyAudio()
    if compare:
        profile.hear_pcm_capture()  # the ladder's first rung serves a page that sends PCM
    variants: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="luna-bench-") as tmp:
        async with Rig() as rig:
            for variant in [profile.VARIANTS[0], profile.VARIANTS[-1]] if compare else [None]:
                with variant.python() if variant else contextlib.nullcontext():
                    svc = await rig.service(
                        audio, host=variant.host() if variant else None, new_vad=variant.new_vad() if variant else None
                    )
                    label = variant.name if variant else "default"
                    results = await _steps(rig, svc, audio, plan, Path(tmp), quick, only, label)
                    variants[label] = results
                    if variant is not None:  # the next variant measures with its own Chromium alone
                        await svc.close()
                        rig.services.remove(svc)
    return {
        "mode": "quick" if quick else "full",
        "plan": {**vars(plan), "frames": plan.frames.value},
        "machine": machine(isolation),
        "took_s": round(time.monotonic() - started, 1),
        **({"variants": variants} if compare else {"results": variants["default"]}),
    }


async def _steps(
    rig: Rig,
    svc: Running,
    audio: ReplyAudio,
    plan: Plan,
    tmp: Path,
    quick: bool,
    only: set[str] | None,
    label: str,
) -> dict[str, Any]:
    from bench import hearing as hr
    from bench import scenarios as sc

    steps: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "floor_hearing": lambda: sc.floor_and_hearing(rig, svc, plan, tmp),
        "turns": lambda: sc.turns(rig, svc, audio, plan, tmp),
        "barge_in": lambda: sc.barge_in(rig, svc, audio, plan, tmp),
        "scale": lambda: sc.scale(rig, svc, audio, plan, tmp),
        "summon": lambda: sc.summon(rig, svc, audio, plan),
        "hearing": lambda: hr.hearing(quick),
        "ducking": lambda: hr.ducking(rig, svc, audio, quick, tmp),
    }
    results: dict[str, Any] = {}
    for name, step in steps.items():
        if only is not None and name not in only:
            continue
        t = time.monotonic()
        print(f"[bench] {label}: {name} …", file=sys.stderr, flush=True)
        try:
            results[name] = await step()
        except Exception as exc:  # one broken measurement must not hide the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results[name]["took_s"] = round(time.monotonic() - t, 1)
        await rig.close_browsers()
    # Every bot has ended by now, so each pipeline ticker still running outlived its bot.
    tickers = sum(t.get_name() == "pipeline-ticker" and not t.done() for t in asyncio.all_tasks())
    results["diagnostics"] = {"tickers_left_running": tickers, "live_bots": len(svc.service.manager.live())}
    return results


async def run_pacing(quick: bool, isolation: str) -> dict[str, Any]:
    from bench import pacing
    from bench.harness import Rig

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="luna-bench-") as tmp:
        async with Rig() as rig:
            result = await pacing.run(rig, Path(tmp), rounds=4 if quick else 8, seconds=5.0 if quick else 10.0)
    took = round(time.monotonic() - started, 1)
    return {"mode": "quick" if quick else "full", "machine": machine(isolation), "took_s": took, "pacing": result}


async def run_profile(quick: bool, isolation: str, only: str | None) -> dict[str, Any]:
    from bench import profile
    from bench.harness import Rig
    from bench.instant import ReplyAudio
    from luna_voice import logs

    logs.configure("warning")
    started = time.monotonic()
    rounds, window_s = (2, 10.0) if quick else (4, 20.0)
    with tempfile.TemporaryDirectory(prefix="luna-bench-") as tmp:
        async with Rig() as rig:
            variants = profile.chosen(only)
            result = await profile.run(
                rig, ReplyAudio(), Path(tmp), rounds=rounds, window_s=window_s, variants=variants
            )
    took = round(time.monotonic() - started, 1)
    return {"mode": "quick" if quick else "full", "machine": machine(isolation), "took_s": took, "profile": result}


# ------------------------------------------------------------------------------------------------------ table
def _f(v: float | None, digits: int = 0) -> str:
    return "" if v is None or v != v else f"{round(v, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0"


def _ratio(v: float | None, floor: float | None) -> str:
    return "" if not v or not floor or v != v or floor != floor else f"{v / floor:.2f}"


def _row(label: str, m: dict[str, Any], n: str, floor: float | None, note: str, *, less: float = 0.0) -> list[str]:
    """One latency row; the ratio is (p50 - ``less``) over the floor's p50."""
    p95 = _f(m["p95"]) if m["n"] > 1 else ""
    return [label, _f(m["p50"]), p95, n, _f(floor), _ratio(m["p50"] - less, floor), note]


def rows(r: dict[str, Any]) -> list[list[str]]:
    """Latency table: measurement, p50, p95, n, floor p50, ratio to the floor, note."""
    out: list[list[str]] = []

    def ok(key: str, label: str) -> dict[str, Any] | None:
        result = r.get(key, {"error": "not run"})
        if "error" in result:
            out.append([label, "n/a", "", "", "", "", result["error"]])
            return None
        return result

    floor = floor_mouth = None
    if fh := ok("floor_hearing", "1 floor: page → page one-way, ms"):
        # Timed from the microphone's sample (as row 3 from Python's); the speaker's own recorder hears it later.
        timed = "sample" if fh.get("floor_sample_ms", {}).get("n") else "mouth"
        m, hearing = (
            (fh["floor_sample_ms"], fh["hearing_sample_ms"])
            if timed == "sample"
            else (fh["floor_ms"], fh["hearing_ms"])
        )
        floor, floor_mouth, sent = m["p50"], fh["floor_ms"]["p50"], fh["clicks_sent"]
        note = "two plain demo pages; from the microphone's sample"
        if timed == "sample":
            late = fh["mouth_late_ms"]["p50"]
            note += f" (the speaker's recorder hears it {_f(late)} ms later: {_f(floor_mouth)} ms from there)"
        else:
            note = "two plain demo pages; from the speaker's recorder (no frame stamps)"
        out.append(_row("1 floor: page → page one-way, ms", m, f"{m['n']}/{sent}", None, note))
        out[-1][5] = "1.00"
        to_page = fh["hearing_to_page_sample_ms" if timed == "sample" else "hearing_to_page_ms"]
        note = f"to Luna's page {_f(to_page['p50'])} ms, then the bridge"
        out.append(_row("2 hearing: page → Python one-way, ms", hearing, f"{hearing['n']}/{sent}", floor, note))
        nccs = (fh["fidelity_hearing"], fh["fidelity_floor"])
        out.append(
            [
                "2 hearing fidelity, NCC",
                _f(nccs[0], 3),
                "",
                "",
                _f(nccs[1], 3),
                _ratio(*nccs),
                "speech: Python vs plain page",
            ]
        )
    if t := ok("turns", "3 speaking: Python → ear one-way, ms"):
        s = t["speaking_ms"]
        gaps = f"playback gaps {t['playback_gaps']} in {t['frames_out']} frames"
        out.append(_row("3 speaking: Python → ear one-way, ms", s, f"{s['n']}/{t['clicks_sent']}", floor, gaps))
        split = f"Python {_f(t['overhead_python_ms']['p50'])} + to the ear {_f(t['overhead_ear_ms']['p50'])}"
        note = f"{split}; end of turn (p50 {_f(t['end_of_turn_ms']['p50'])} ms) not counted"
        out.append(_row("4 turn overhead: commit → ear, ms", t["overhead_ms"], f"{t['turns']} turns", floor, note))
    if b := ok("barge_in", "5 barge-in: mouth → silent at ear, ms"):
        m, least = b["barge_in_ms"], b["barge_in_min_ms"]
        label = "5 barge-in: mouth → silent at ear, ms"
        if m["n"]:
            note = f"includes barge_in_min_ms {least}; ratio on the rest, to the floor from the speaker's recorder"
            out.append(_row(label, m, str(m["n"]), floor_mouth, note, less=least))
        else:
            why = f"Luna was never audible when a question began ({b['questions_while_silent']} questions)"
            out.append([label, "n/a", "", "0", "", "", why])
    if sm := ok("summon", "7 summon warm: POST → joined, ms"):
        w, wf = sm["warm_ms"], sm["warm_floor_ms"]
        out.append(
            _row("7 summon warm: POST → joined, ms", w, str(w["n"]), wf["p50"], "floor: plain page context+load+join")
        )
        note = f"service start {_f(sm['startup_ms']['p50'])} ms before it; floor: first page of a fresh browser"
        out.append(_row("7 summon cold: POST → joined, ms", sm["cold_ms"], "1", sm["cold_floor_ms"]["p50"], note))
    return out


LEGS_HEAD = ["leg, p50 ms", "1 floor", "3 Luna", "Luna − floor"]
LEGS = [
    "source→sample",
    "sample→encoded",
    "source→encoded",
    "encoded→ear",
    "encoded→transform",
    "transform→ear",
    "sample→ear",
    "source→ear",
]


def legs_rows(r: dict[str, Any]) -> list[list[str]]:
    """Rows 1 and 3 leg by leg (bench/legs.py): the legs the README discusses, then each step between stamps."""
    floor = r.get("floor_hearing", {}).get("floor_legs", {})
    luna = r.get("turns", {}).get("speaking_legs", {})
    out = [
        ["clicks found in the sent frames", str(floor.get("n", "")), str(luna.get("n", "")), ""],
        ["... and in the received ones", str(floor.get("receiver_n", "")), str(luna.get("receiver_n", "")), ""],
    ]
    steps = list(luna.get("steps_p50_ms", floor.get("steps_p50_ms", {})))
    for key, label in [(k, k) for k in LEGS] + [(k, f"  {k}") for k in steps]:
        a = floor.get(key, floor.get("steps_p50_ms", {}).get(key))
        b = luna.get(key, luna.get("steps_p50_ms", {}).get(key))
        if _f(a) or _f(b):  # without receiver stamps their legs are empty
            out.append([label, _f(a), _f(b), _f(None if a is None or b is None else b - a)])
    return out


SCALE_HEAD = [
    "bots",
    "CPU %/bot",
    "RSS/PSS MB/bot",
    "page CPU %",
    "page RSS/PSS MB",
    "CPU ratio",
    "ear p50/p95 ms",
    "clicks lost %",
    "underruns %",
    "shortened %",
    "gaps/frames",
]


def scale_rows(r: dict[str, Any]) -> list[list[str]]:
    sc = r.get("scale", {"error": "not run"})
    if "error" in sc:
        return [["n/a", *[""] * (len(SCALE_HEAD) - 2), sc["error"]]]
    return [
        [
            str(x["bots"]),
            _f(x["cpu_per_bot_pct"]),
            f"{_f(x['rss_per_bot_mb'])} / {_f(x['pss_per_bot_mb'])}",
            _f(x["human_cpu_per_page_pct"]),
            f"{_f(x['human_rss_per_page_mb'])} / {_f(x['human_pss_per_page_mb'])}",
            _ratio(x["cpu_per_bot_pct"], x["human_cpu_per_page_pct"]),
            f"{_f(x['speaking_ms']['p50'])} / {_f(x['speaking_ms']['p95'])}",
            _f(x["clicks_lost_pct"], 1),
            _f(x["underrun_pct"], 3),
            _f(x["reply_shortened_pct"], 1),
            f"{x['playback_gaps']}/{x['frames_out']}",
        ]
        for x in sc["rows"]
    ]


def table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def report(data: dict[str, Any]) -> str:
    m = data["machine"]
    head = (
        f"Luna voice bench ({data['mode']}, {data['took_s']:.0f} s) — {m['nproc']} cores, {m['memory_gb']} GB, "
        f"{m['chromium']}, {m['date']}, commit {m['commit']}, {m['isolation']}"
    )
    if "variants" not in data:
        return "\n\n".join([head, _tables(data["results"])])
    return "\n\n".join([head, *(f"### {name}\n\n{_tables(r)}" for name, r in data["variants"].items())])


def _tables(r: dict[str, Any]) -> str:
    from bench import hearing as hr

    largest = r.get("scale", {}).get("largest_ok", "n/a")
    diag = r.get("diagnostics", {})
    floor = r.get("floor_hearing", {}).get("floor_ms", {}).get("p50")
    ran = set(r)  # with --only, a table none of whose scenarios ran is left out
    parts = []
    if ran & {"floor_hearing", "turns", "barge_in", "summon"}:
        parts.append(table(["measurement", "p50", "p95", "n", "floor p50", "ratio", "note"], rows(r)))
    if "floor_legs" in r.get("floor_hearing", {}) or "speaking_legs" in r.get("turns", {}):
        parts.append(table(LEGS_HEAD, legs_rows(r)))
    if "scale" in ran:
        parts += [table(SCALE_HEAD, scale_rows(r)), f"Largest N with underruns under 0.1 %: {largest}"]
    if ran & {"hearing", "ducking"}:
        parts.append(table(["hearing", "now", "baseline/floor", "goal", "note"], hr.rows(r, floor)))
    parts.append(f"Pipeline tickers still running after their bots ended: {diag.get('tickers_left_running', '?')}")
    return "\n\n".join(parts)


def _headed(what: str, data: dict[str, Any], body: str) -> str:
    m = data["machine"]
    head = f"Luna voice {what} ({data['mode']}, {data['took_s']:.0f} s) — {m['nproc']} cores, {m['chromium']}, "
    return f"{head}{m['date']}, commit {m['commit']}, {m['isolation']}\n\n{body}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenario",
        nargs="?",
        choices=["profile", "pacing"],
        help="profile one bot, or how evenly each way of producing a track paces it, instead of the tables",
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples; under 3 minutes on 2 cores")
    parser.add_argument("--out", type=Path, help="the JSON (default bench/results/latest.json or profile.json)")
    parser.add_argument(
        "--only", help="comma-separated scenarios, e.g. floor_hearing,hearing,ducking (profile: words of variants)"
    )
    parser.add_argument("--compare", action="store_true", help="run the scenarios before and after the cuts")
    parser.add_argument(
        "--receiver-stamps",
        action="store_true",
        help="rows 1 and 3: stamp received frames too, to split encoder → ear (a worker hop before the jitter buffer)",
    )
    parser.add_argument(
        "--bots", help="the scale scenario's numbers of bots, comma-separated (default 1,2,4 or 1,2,4,8)"
    )
    args = parser.parse_args()
    isolation = isolate()
    out = args.out or Path(f"bench/results/{args.scenario or 'latest'}.json")
    if args.scenario == "profile":
        from bench import profile

        data = asyncio.run(run_profile(args.quick, isolation, args.only))
        text = _headed("profile", data, profile.report(data["profile"]))
    elif args.scenario == "pacing":
        from bench import pacing

        data = asyncio.run(run_pacing(args.quick, isolation))
        text = _headed("pacing", data, pacing.report(data["pacing"]))
    else:
        only = set(args.only.split(",")) if args.only else None
        bots = tuple(int(n) for n in args.bots.split(",")) if args.bots else None
        data = asyncio.run(run(args.quick, isolation, only, args.compare, bots, args.receiver_stamps))
        text = report(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(text)
    print(f"\n(JSON: {out})")


if __name__ == "__main__":
    main()
