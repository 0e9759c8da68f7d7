"""Throughput and latency: habla over Twilio WhatsApp vs a bare ``rasa run``, same run.

    python -m bench.throughput [--senders 16] [--turns 24] [--workers 2]

First the ceiling: the CPU time of one turn of the bare Rasa engine (Rasa's ``Agent``
in-process, one turn at a time, with its action server; :mod:`bench.rasa_turn_cpu`)
gives the turns per second this machine's cores could do if they did nothing else;
each target's throughput is then reported as a fraction of it.

habla is started as ``habla run`` with the example bot, its Twilio client pointed at a
local fake Messages API. Each simulated user sends a signed webhook, waits until the
reply arrives at the fake, then sends its next message: latency is webhook → reply
received. The same trained model is then served by a bare ``rasa run`` (REST channel,
in-memory tracker store) with ``rasa run actions`` for the custom actions, and driven
by the same users with the same script over its REST channel.

Prints p50/p99 latency, throughput and the ratios. Not a test: numbers vary with the
machine's load. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
from twilio.request_validator import RequestValidator

from nlu.training import ensure_model
from tests.fakes.twilio_api import FakeTwilioAPI, SentMessage

PROJECT = Path(__file__).resolve().parent.parent
ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-auth-token"
BOT = "whatsapp:+14155238886"

# One user's conversation; every step gets exactly one bot message in the example bot.
SCRIPT = [
    "hello",
    "when are you open?",
    "how much is the hoodie?",
    "do you ship to Germany?",
    "where is my order?",
    "AB12345",
    "thanks",
    "bye",
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start(cmd: list[str], env: dict[str, str], ready: str, timeout: float = 240.0) -> Any:
    """Start a process and wait for a line containing ``ready`` in its output."""
    # Importing Rasa (through Sanic) installs uvloop's policy, which has no child watcher.
    if type(asyncio.get_event_loop_policy()) is not asyncio.DefaultEventLoopPolicy:
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=PROJECT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    seen: list[str] = []

    async def wait() -> None:
        while True:
            line = (await stdout.readline()).decode(errors="replace")
            if not line:
                raise RuntimeError(f"{cmd[:3]} exited:\n" + "".join(seen[-30:]))
            seen.append(line)
            if ready in line:
                return

    await asyncio.wait_for(wait(), timeout)
    drain = asyncio.get_running_loop().create_task(stdout.read())
    _DRAINS.add(drain)
    drain.add_done_callback(_DRAINS.discard)
    return proc


_DRAINS: set[asyncio.Task[bytes]] = set()


async def stop(proc: Any) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


async def wait_http(session: aiohttp.ClientSession, url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer")
        await asyncio.sleep(0.2)


class Inbox:
    """Replies arriving at the fake Twilio API, by recipient.

    Each reply is queued once, as the fake accepts it. (Until 2026-12-02 this wrapped
    the fake's request handler and queued every message accepted while that handler
    ran: with concurrent senders, replies to other users' requests were queued again,
    senders went on before their own reply and habla's figures were wrong.)"""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[SentMessage]] = defaultdict(asyncio.Queue)

    def attach(self, fake: FakeTwilioAPI) -> None:
        fake.listeners.append(lambda msg: self.queues[msg.to].put_nowait(msg))

    def stray(self, to: str) -> int:
        """Replies waiting for ``to`` that no message asked for (taken out)."""
        queue, count = self.queues[to], 0
        while not queue.empty():
            queue.get_nowait()
            count += 1
        return count


async def run_load(
    send: Any, senders: int, turns: int, warmup: int
) -> tuple[list[float], float, int]:
    """``senders`` users in parallel, each sending ``warmup`` unmeasured messages, then
    (once every user is done with those) ``turns`` measured ones, one after another.
    The wall time is the measured phase's only: a server's one-time costs (its first
    turns) are not spread over the throughput."""
    latencies: list[float] = []
    errors = 0

    async def user(i: int, first: int, count: int, measured: bool) -> None:
        nonlocal errors
        for n in range(first, first + count):
            text = SCRIPT[n % len(SCRIPT)]
            t0 = time.perf_counter()
            ok = await send(i, text)
            dt = time.perf_counter() - t0
            if measured:
                latencies.append(dt)
                errors += 0 if ok else 1

    await asyncio.gather(*(user(i, 0, warmup, False) for i in range(senders)))
    start_at = time.perf_counter()
    await asyncio.gather(*(user(i, warmup, turns, True) for i in range(senders)))
    return latencies, time.perf_counter() - start_at, errors


def summarize(name: str, latencies: list[float], wall: float, errors: int) -> dict[str, Any]:
    qs = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "target": name,
        "turns": len(latencies),
        "errors": errors,
        "throughput": len(latencies) / wall,
        "p50_ms": qs[49] * 1000,
        "p99_ms": qs[98] * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }


def bare_rasa(model: Path, tmp: Path) -> tuple[list[str], list[str], str]:
    """The commands of a bare ``rasa run`` of ``model`` (REST channel) and of its
    ``rasa run actions``, and the REST webhook's URL (config files written to ``tmp``)."""
    aport, rport = free_port(), free_port()
    (tmp / "endpoints.yml").write_text(
        f"action_endpoint:\n  url: http://127.0.0.1:{aport}/webhook\n"
    )
    (tmp / "credentials.yml").write_text("rest:\n")
    rasa = str(Path(sys.executable).parent / "rasa")
    actions = [rasa, "run", "actions", "--actions", "actions", "--port", str(aport)]
    server = [
        rasa,
        "run",
        "--model",
        str(model),
        "--port",
        str(rport),
        "--endpoints",
        str(tmp / "endpoints.yml"),
        "--credentials",
        str(tmp / "credentials.yml"),
    ]
    return actions, server, f"http://127.0.0.1:{rport}/webhooks/rest/webhook"


async def bench_habla(model: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    fake = FakeTwilioAPI(ACCOUNT_SID, AUTH_TOKEN)
    inbox = Inbox()
    inbox.attach(fake)
    await fake.start()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = {
        "HABLA_MODEL": str(model),
        "HABLA_DATA_DIR": str(tmp / "habla"),
        "HABLA_PUBLIC_URL": public,
        "HABLA_LOG_LEVEL": "WARNING",
        "HABLA_ENGINE_WORKERS": str(args.workers),
        "HABLA_TWILIO_STATUS_CALLBACK": "false",
        "HABLA_TWILIO_API_BASE": fake.url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "HABLA_REST_TOKEN": "bench",
    }
    proc = await start(
        [sys.executable, "-m", "habla.cli", "run", "--port", str(port)], env, "Press Ctrl-C"
    )
    validator = RequestValidator(AUTH_TOKEN)
    url = f"{public}/webhooks/twilio/webhook"
    counter = iter(range(10**9))
    try:
        async with aiohttp.ClientSession() as session:

            async def send(i: int, text: str) -> bool:
                """One message and its reply; False also when a reply arrived that no
                message asked for (SCRIPT's steps each get one reply in the example
                bot: a second one would be taken for the next message's)."""
                user = f"+1555{i:07d}"
                stray = inbox.stray(f"whatsapp:{user}")
                sid = f"SM{next(counter):032x}"
                form = {
                    "MessageSid": sid,
                    "From": f"whatsapp:{user}",
                    "To": BOT,
                    "Body": text,
                    "NumMedia": "0",
                    "WaId": user[1:],
                    "AccountSid": ACCOUNT_SID,
                }
                sig = validator.compute_signature(url, form)
                async with session.post(
                    url, data=form, headers={"X-Twilio-Signature": sig}
                ) as resp:
                    if resp.status != 200:
                        return False
                try:
                    await asyncio.wait_for(inbox.queues[f"whatsapp:{user}"].get(), 60)
                    return not stray
                except asyncio.TimeoutError:
                    return False

            result = await run_load(send, args.senders, args.turns, args.warmup)
    finally:
        await stop(proc)
        await fake.close()
    return summarize(f"habla ({args.workers or 'in-process'} engine worker(s))", *result)


async def bench_rasa(model: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    actions_cmd, rasa_cmd, url = bare_rasa(model, tmp)
    actions = await start(actions_cmd, {}, "Action endpoint is up and running")
    rasa = await start(rasa_cmd, {"TF_CPP_MIN_LOG_LEVEL": "2"}, "Rasa server is up and running")
    try:
        async with aiohttp.ClientSession() as session:
            await wait_http(session, url.removesuffix("webhooks/rest/webhook"))

            async def send(i: int, text: str) -> bool:
                body = {"sender": f"+1555{i:07d}", "message": text}
                async with session.post(url, json=body) as resp:
                    return resp.status == 200 and len(await resp.json()) >= 1

            result = await run_load(send, args.senders, args.turns, args.warmup)
    finally:
        await stop(rasa)
        await stop(actions)
    return summarize("bare rasa run (+ rasa run actions)", *result)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) a live process has used (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def rasa_turn_cpu(model: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """CPU seconds of one turn of the bare Rasa engine (``bench/rasa_turn_cpu.py``: Rasa's
    ``Agent`` in-process, one turn at a time, plus its ``rasa run actions``)."""
    actions_cmd, _, _ = bare_rasa(model, tmp)
    action_url = (tmp / "endpoints.yml").read_text().split("url: ", 1)[1].strip()
    actions = await start(actions_cmd, {}, "Action endpoint is up and running")
    cmd = [sys.executable, "-m", "bench.rasa_turn_cpu", str(model), action_url]
    cmd += ["--users", str(args.senders), "--turns", str(args.turns)]
    engine = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=PROJECT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert engine.stdin is not None and engine.stdout is not None
    try:
        while b'"ready"' not in (line := await engine.stdout.readline()):
            if not line:
                raise RuntimeError("bench.rasa_turn_cpu stopped before it was ready")
        actions_before = process_cpu_s(actions.pid)
        engine.stdin.write(b"go\n")
        await engine.stdin.drain()
        while not (line := await engine.stdout.readline()).startswith(b'{"turns"'):
            if not line:
                raise RuntimeError("bench.rasa_turn_cpu stopped before its result")
        result = json.loads(line)
        result["actions_cpu_s"] = process_cpu_s(actions.pid) - actions_before
        await engine.wait()
    finally:
        await stop(engine)
        await stop(actions)
    result["cpu_per_turn_s"] = (result["cpu_s"] + result["actions_cpu_s"]) / result["turns"]
    result["ceiling"] = (os.cpu_count() or 1) / result["cpu_per_turn_s"]
    return result


def table(rows: list[dict[str, Any]]) -> str:
    head = "| target | turns | errors | throughput (turns/s) | p50 (ms) | p99 (ms) |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['turns']} | {r['errors']} | {r['throughput']:.1f} | "
            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} |"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--turns", type=int, default=24, help="measured messages per sender")
    parser.add_argument(
        "--warmup",
        type=int,
        default=len(SCRIPT),
        help="unmeasured messages per sender (default: the script once)",
    )
    parser.add_argument("--workers", type=int, default=2, help="HABLA_ENGINE_WORKERS")
    parser.add_argument("--skip-rasa", action="store_true")
    parser.add_argument("--skip-ceiling", action="store_true")
    args = parser.parse_args()
    model = ensure_model(PROJECT, PROJECT / ".habla" / "models")
    rows = []
    ceiling: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_ceiling:
            ceiling = await rasa_turn_cpu(model, args, Path(tmp))
            print(
                f"bare Rasa engine, one turn at a time: {ceiling['cpu_per_turn_s'] * 1000:.1f} ms "
                f"CPU per turn ({ceiling['cpu_s']:.1f} s engine + {ceiling['actions_cpu_s']:.1f}"
                f" s actions over {ceiling['turns']} turns, {ceiling['answered']} answered): "
                f"ceiling {ceiling['ceiling']:.1f} turns/s on {os.cpu_count()} CPUs",
                flush=True,
            )
        rows.append(await bench_habla(model, args, Path(tmp)))
        print(table(rows), flush=True)
        if not args.skip_rasa:
            rows.append(await bench_rasa(model, args, Path(tmp)))
    print(
        f"\n{args.senders} concurrent senders, {args.turns} measured turns each, "
        f"{os.cpu_count()} CPUs\n"
    )
    print(table(rows))
    if ceiling:
        for row in rows:
            row["of_ceiling"] = row["throughput"] / ceiling["ceiling"]
            print(
                f"{row['target']}: {row['of_ceiling']:.0%} of the ceiling "
                f"({ceiling['ceiling']:.1f} turns/s)"
                + ("  (target >= 80%)" if row is rows[0] else "")
            )
    if len(rows) == 2:
        ours, base = rows
        print(
            f"\nthroughput ratio habla / rasa: {ours['throughput'] / base['throughput']:.2f}x "
            "(target >= 4x)"
        )
        print(
            f"p99 ratio habla / rasa:        {ours['p99_ms'] / base['p99_ms']:.2f}x "
            "(target <= 0.10x)"
        )
        print(f"p50 ratio habla / rasa:        {ours['p50_ms'] / base['p50_ms']:.2f}x")
    out = PROJECT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "throughput.json").write_text(json.dumps({"rows": rows, "ceiling": ceiling}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    asyncio.run(main())
