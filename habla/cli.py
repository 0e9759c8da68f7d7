"""``habla train | run | shell | settings | validate | test | translate``."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import signal
import sys
import time
import warnings
from typing import Any

from nlu.logs import configure_logging, quiet_imports
from runtime.settings import Settings, SettingsError, load_settings

STARTED = time.monotonic()  # (the interpreter's start and these imports: about 0.2 s)

logger = logging.getLogger("habla")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as e:
        print(f"habla: {e}", file=sys.stderr)
        raise SystemExit(2) from e


def cmd_train(args: argparse.Namespace) -> int:
    from nlu.training import ensure_model, train

    s = _settings()
    configure_logging(s.server.log_level, fmt=s.server.log_format)
    bot = s.path(s.bot.dir)
    path = train(bot, s.models_dir) if args.force else ensure_model(bot, s.models_dir)
    print(path)
    return 0


def print_urls(s: Settings, urls: dict[str, list[str]], closed: dict[str, list[str]]) -> None:
    local = f"http://{s.server.host}:{s.server.port}"
    base = s.public_base or local
    lines = [f"habla is serving on {local}"]
    if "rest" in urls and "rest" not in closed:
        lines.append(f"  dev chat:  {local}/")
    for name, paths in urls.items():
        state = f"  (answers 403: set {', '.join(closed[name])})" if name in closed else ""
        for url in paths:
            lines.append(f"  {name:<8} {url.replace(local, base)}{state}")
    if not s.public_base:
        lines.append(
            "  set HABLA_PUBLIC_URL to the address providers reach (webhook signatures "
            "are checked against it)"
        )
    lines.append("Press Ctrl-C to stop.")
    print("\n".join(lines), flush=True)


async def serve(s: Settings, watch: bool = False) -> None:
    """Serve until SIGINT (Ctrl-C) or SIGTERM, then drain running turns and stop;
    ``watch``: retrain and swap the model in when the bot's files change."""
    from aiohttp import web

    with warnings.catch_warnings(record=True):  # what Rasa's modules warn at import
        from habla.server import RUNTIME, create_app

    began = STARTED  # the figures printed below count from the process's start
    app = create_app(s, background=True)
    watching: asyncio.Task[None] | None = None
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=10)
    await runner.setup()  # opens the stores; the model loads in the background
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, log_tasks)  # `kill -USR1 <pid>`: what waits
    try:
        site = web.TCPSite(runner, s.server.host, s.server.port)
        await site.start()
        base = f"http://{s.server.host}:{s.server.port}"
        runtime = app[RUNTIME]
        print(
            f"habla is listening after {time.monotonic() - began:.1f} s; loading the model "
            "(webhooks are accepted meanwhile and answered when it is loaded)",
            flush=True,
        )
        assert runtime.loading is not None
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({runtime.loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if runtime.loading.done():
            runtime.loading.result()  # a model that cannot load stops the server
            print(f"habla: ready after {time.monotonic() - began:.1f} s", flush=True)
            print_urls(s, runtime.urls(base), runtime.closed_endpoints)
            if watch:
                watching = start_watch(s, runtime)
        await stopping
        print("habla: stopping (finishing turns in progress)...", flush=True)
    finally:
        if watching is not None:
            watching.cancel()
        await runner.cleanup()


def start_watch(s: Settings, runtime: Any) -> asyncio.Task[None]:
    from pathlib import Path

    from habla.watch import Watcher

    bot = s.path(s.bot.dir)
    watcher = Watcher(runtime, bot, s.models_dir)
    watcher.model = Path(s.bot.model) if s.bot.model else None
    print(f"habla: watching {bot} (domain, config, data): changes retrain", flush=True)
    return asyncio.create_task(watcher.run())


def log_tasks() -> None:
    """Log where every task of the server is waiting (for an operator: ``kill -USR1``)."""
    tasks = asyncio.all_tasks()
    lines = [f"{len(tasks)} tasks:"]
    for task in tasks:
        buffer = io.StringIO()
        task.print_stack(limit=12, file=buffer)
        lines.append(buffer.getvalue())
    logging.getLogger("habla").warning("\n".join(lines))


def cmd_run(args: argparse.Namespace) -> int:
    from nlu.training import ensure_model

    s = _settings()
    if args.port is not None:
        s = s.with_overrides(server={"port": args.port})
    # Rasa (TensorFlow) is imported by the engine's background load, not before the
    # server listens: webhooks are accepted about 3 s after start, not 15 s
    configure_logging(s.server.log_level, import_rasa=False, fmt=s.server.log_format)
    if not s.bot.model:  # train before the server starts, with progress on the console
        model = ensure_model(s.path(s.bot.dir), s.models_dir)
        s = s.with_overrides(bot={"model": str(model)})
    import uvloop  # (a Rasa dependency) the event loop habla has always run on

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(s, watch=args.watch))
    return 0


async def _shell(s: Settings) -> None:
    from channels.base import OutputChannel
    from habla.server import Runtime
    from runtime.messages import BotReply, Delivery, InboundMessage

    class TerminalOutput(OutputChannel):
        async def send(self, msg: InboundMessage, reply: BotReply) -> list[Delivery]:
            text = self.numbered_text(reply)
            for extra in (reply.image, reply.attachment):
                text += f"\n[{extra}]" if extra else ""
            print("\n".join("bot> " + line for line in text.splitlines() or [""]), flush=True)
            return [Delivery(ok=True)]

    runtime = Runtime(s.with_overrides(server={"channels": ""}))
    await runtime.start()
    out = TerminalOutput()
    print("Chat with the bot; /restart starts over, Ctrl-D quits.", flush=True)
    try:
        while True:
            try:
                text = await asyncio.to_thread(input, "you> ")
            except EOFError:
                break
            if text.strip():
                await runtime.converse(
                    InboundMessage(channel="shell", conversation_id="shell", text=text), out
                )
    finally:
        await runtime.close()


def cmd_shell(args: argparse.Namespace) -> int:
    s = _settings()
    configure_logging("WARNING" if s.server.log_level == "INFO" else s.server.log_level)
    try:
        asyncio.run(_shell(s))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from runtime.settings import settings_table

    print(settings_table())
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from habla.validate import validate

    configure_logging("ERROR")
    bot = Path(os.environ.get("HABLA_BOT_DIR") or ".").resolve()
    report = validate(bot)
    print(report.to_json() if args.json else report.text(args.verbose))
    return 0 if report.ok else 1


async def conversation_tests(s: Settings, paths: list[str]) -> list[Any]:
    """Run the stories in ``paths`` through a server's turn, in a scratch data folder."""
    import tempfile
    from pathlib import Path

    from habla.conversations import read_stories, run_story
    from habla.server import Runtime

    stories = read_stories([Path(p) for p in paths])
    with tempfile.TemporaryDirectory(prefix="habla-test-") as scratch:
        runtime = Runtime(
            s.with_overrides(
                server={"channels": ""},
                store={"data_dir": scratch},
                voice={"stt": "off", "tts": "off"},
            )
        )
        await runtime.start()
        try:
            return [await run_story(runtime, story) for story in stories]
        finally:
            await runtime.close()


def cmd_test(args: argparse.Namespace) -> int:
    from habla.conversations import report
    from nlu.training import ensure_model

    s = _settings()
    configure_logging("ERROR" if s.server.log_level == "INFO" else s.server.log_level)
    if not s.bot.model:
        s = s.with_overrides(bot={"model": str(ensure_model(s.path(s.bot.dir), s.models_dir))})
    try:
        results = asyncio.run(conversation_tests(s, args.paths))
    except (OSError, ValueError) as e:
        print(f"habla test: {e}", file=sys.stderr)
        return 2
    print(report(results))
    return 0 if all(r.passed for r in results) else 1


def cmd_translate(args: argparse.Namespace) -> int:
    from habla.translate import translate_responses

    s = _settings()
    configure_logging("WARNING")
    try:
        outcome = asyncio.run(translate_responses(s, args.to.lower(), (args.source or "").lower()))
    except SettingsError as e:
        print(f"habla: {e}", file=sys.stderr)
        return 2
    print(
        f"{outcome.path}: {outcome.translated} variants machine-translated for review, "
        f"{outcome.kept} reviewed ones kept; `habla validate` lists what is left to review"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="habla", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the bot if its files changed")
    p.add_argument("--force", action="store_true", help="train even if a model exists")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("run", help="serve the bot (trains first if needed)")
    p.add_argument("--port", type=int, default=None, help="override HABLA_PORT")
    p.add_argument(
        "--watch", action="store_true", help="retrain and swap the model when the bot changes"
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("shell", help="chat with the bot in the terminal")
    p.set_defaults(func=cmd_shell)
    p = sub.add_parser("settings", help="print the table of settings")
    p.set_defaults(func=cmd_settings)
    p = sub.add_parser("validate", help="check the bot's files, catalog and translations")
    p.add_argument("--json", action="store_true", help="the findings as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="list the infos too")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("test", help="run conversation tests (Rasa test stories)")
    p.add_argument("paths", nargs="*", default=["tests/conversations"], help="files or folders")
    p.set_defaults(func=cmd_test)
    p = sub.add_parser("translate", help="machine-translate every response for review")
    p.add_argument("--to", required=True, help="the language to translate to (ISO 639-1)")
    p.add_argument("--from", dest="source", default="", help="the source (default language)")
    p.set_defaults(func=cmd_translate)
    args = parser.parse_args(argv)
    quiet_imports()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
