"""``luna-voice`` command line."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="luna-voice")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="run the control API, the bridge and the local demo room (LUNA_BOT_HOST=fly: the dispatcher)"
    )
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    sub.add_parser("bot", help="run one stay on a machine a dispatcher started, then exit")
    args = parser.parse_args(argv)
    if args.command == "serve":
        from luna_voice.service import serve as run

        run(host=args.host, port=args.port)
    elif args.command == "bot":
        from luna_voice.scale.worker import main as bot

        bot()
