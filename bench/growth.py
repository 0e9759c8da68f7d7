"""A turn's cost as a conversation grows: habla vs a bare ``rasa run``, same run.

    python -m bench.growth [--turns 5000] [--rasa-turns 1000] [--workers 0] [--users 200]

habla is started as ``habla run`` (the example bot, the embedded SQLite store, its
Twilio client pointed at a local fake Messages API). One WhatsApp user sends
``--turns`` signed webhooks, each after the previous reply reached the fake (latency:
webhook sent → reply received), cycling through the throughput benchmark's script
(greeting, opening hours, a price, shipping, the order-status form, thanks, goodbye).
The median turn around turns 10, 100, 1,000 and 5,000 is printed with its ratio to
turn 10, and the server's memory (RSS, engine workers included) as the conversation
grows. Then ``--users`` more users hold a short conversation each, and the memory that
adds is reported per conversation; and, from the store, what the longest and a short
conversation hold once cached (tracemalloc: the tracker and nlu/history.py's caches).

In the same run the same model is served by a bare ``rasa run`` (REST channel, its
in-memory tracker store) with ``rasa run actions``, and one user sends the same script
``--rasa-turns`` times. Not a test: the numbers move with the machine's load.
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
from pathlib import Path
from typing import Any

import aiohttp
from twilio.request_validator import RequestValidator

from bench.throughput import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    BOT,
    PROJECT,
    SCRIPT,
    Inbox,
    bare_rasa,
    free_port,
    start,
    stop,
    wait_http,
)
from nlu.training import ensure_model
from tests.fakes.twilio_api import FakeTwilioAPI

CHECKPOINTS = (10, 100, 1000, 5000)
SHORT = 6  # turns of each extra user's conversation (memory per conversation)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (engine workers), in MB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total / 1024


def median_at(latencies: list[float], turn: int) -> float | None:
    """Median latency (ms) of the turns around ``turn`` (1-based)."""
    if turn > len(latencies):
        return None
    half = min(25, max(turn // 2, 1))
    window = latencies[max(turn - half, 0) : min(turn + half, len(latencies))]
    return statistics.median(window) * 1000


class Conversation:
    """One user after another, each turn after the previous reply."""

    def __init__(self, send: Any, pid: int) -> None:
        self.send, self.pid = send, pid
        self.latencies: list[float] = []
        self.memory: dict[int, float] = {}
        self.errors = 0

    async def run(self, user: int, turns: int, measure: bool = True) -> None:
        for n in range(turns):
            t0 = time.perf_counter()
            ok = await self.send(user, SCRIPT[n % len(SCRIPT)])
            if not measure:
                self.errors += 0 if ok else 1
                continue
            self.latencies.append(time.perf_counter() - t0)
            self.errors += 0 if ok else 1
            if n + 1 in CHECKPOINTS:
                self.memory[n + 1] = rss_mb(self.pid)
            if (n + 1) % 500 == 0:
                print(
                    f"  turn {n + 1}: {median_at(self.latencies, n + 1):.0f} ms, "
                    f"{rss_mb(self.pid):.0f} MB",
                    flush=True,
                )

    async def per_conversation_mb(self, users: int) -> float:
        before = rss_mb(self.pid)
        for u in range(1, users + 1):
            await self.run(u, SHORT, measure=False)
        return (rss_mb(self.pid) - before) / users * 1024


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
        "HABLA_FLAT_HISTORY": "true" if args.flat else "false",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
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
                user = f"+1555{i:07d}"
                form = {
                    "MessageSid": f"SM{next(counter):032x}",
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
                    await asyncio.wait_for(inbox.queues[f"whatsapp:{user}"].get(), 120)
                    return True
                except asyncio.TimeoutError:
                    return False

            conversation = Conversation(send, proc.pid)
            await conversation.run(0, args.turns)
            per_conversation = await conversation.per_conversation_mb(args.users)
    finally:
        await stop(proc)
        await fake.close()
    args.held = held_in_memory(tmp / "habla" / "habla.sqlite3")
    name = f"habla ({args.workers} engine workers)" if args.workers else "habla (Rasa in-process)"
    if not args.flat:
        name += ", HABLA_FLAT_HISTORY=false"
    return summary(name, conversation, per_conversation)


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

            conversation = Conversation(send, rasa.pid)
            await conversation.run(0, args.rasa_turns)
            per_conversation = await conversation.per_conversation_mb(args.users)
    finally:
        await stop(rasa)
        await stop(actions)
    return summary("bare rasa run (+ rasa run actions)", conversation, per_conversation)


def summary(name: str, conversation: Conversation, per_conversation_kb: float) -> dict[str, Any]:
    medians = {t: median_at(conversation.latencies, t) for t in CHECKPOINTS}
    first, last = min(conversation.memory), max(conversation.memory)  # from turn 10 (warm)
    turns = last - first
    growth = (conversation.memory[last] - conversation.memory[first]) / turns * 1000 if turns else 0
    return {
        "target": name,
        "turns": len(conversation.latencies),
        "errors": conversation.errors,
        "median_ms": medians,
        "rss_mb": conversation.memory,
        "mb_per_1000_turns": growth,
        "kb_per_short_conversation": per_conversation_kb,
    }


def held_in_memory(db: Path) -> list[dict[str, Any]]:
    """What a cached conversation holds in an engine process, measured with tracemalloc:
    its tracker rebuilt from the store (the latest session, as the tracker store loads
    it) and the caches nlu/history.py keeps beside it (the applied events and the
    serialized events; the policies' state snapshots are a few dozen states)."""
    import gc
    import sqlite3
    import tracemalloc

    from rasa.shared.core.domain import Domain
    from rasa.shared.core.trackers import DialogueStateTracker

    from nlu import history

    history.install()
    domain = Domain.load(str(PROJECT / "domain.yml"))
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = []
    senders = conn.execute(
        "SELECT sender_id, COUNT(*) c FROM events GROUP BY sender_id ORDER BY c DESC"
    ).fetchall()
    for sender, _ in (senders[0], senders[len(senders) // 2]):
        start = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE sender_id = ? AND type_name = ?",
            (sender, "session_started"),
        ).fetchone()[0]
        dicts = [
            json.loads(d)
            for (d,) in conn.execute(
                "SELECT data FROM events WHERE sender_id = ? AND seq >= ? ORDER BY seq",
                (sender, start),
            )
        ]
        gc.collect()
        tracemalloc.start()
        tracker = DialogueStateTracker.from_dict(sender, dicts, domain.slots)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        tracker.applied_events()
        history.serialized_events(tracker)
        gc.collect()
        caches = tracemalloc.get_traced_memory()[0] - held
        tracemalloc.stop()
        n = len(tracker.events)
        rows.append(
            {
                "events": n,
                "tracker_kb": held / 1024,
                "caches_kb": caches / 1024,
                "bytes_per_event": (held + caches) / n,
            }
        )
        del tracker
    return rows


def memory_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| conversation (events) | tracker (KB) | history caches (KB) | bytes per event |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['events']:,} | {r['tracker_kb']:.0f} | {r['caches_kb']:.0f} | "
            f"{r['bytes_per_event']:.0f} |"
        )
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    cells = " | ".join(f"turn {t:,} (ms)" for t in CHECKPOINTS)
    ratios = " | ".join(f"{t:,} / 10" for t in CHECKPOINTS[1:])
    lines = [
        f"| target | turns | errors | {cells} | {ratios} | MB per 1,000 turns | "
        f"KB per {SHORT}-turn conversation |",
        "|---" * (5 + 2 * len(CHECKPOINTS) - 1) + "|",
    ]
    for r in rows:
        m = r["median_ms"]
        values = " | ".join("-" if m[t] is None else f"{m[t]:.0f}" for t in CHECKPOINTS)
        ratio = " | ".join("-" if m[t] is None else f"{m[t] / m[10]:.2f}×" for t in CHECKPOINTS[1:])
        lines.append(
            f"| {r['target']} | {r['turns']} | {r['errors']} | {values} | {ratio} | "
            f"{r['mb_per_1000_turns']:.1f} | {r['kb_per_short_conversation']:.0f} |"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=5000, help="turns of habla's conversation")
    parser.add_argument("--rasa-turns", type=int, default=1000, help="turns of rasa's")
    parser.add_argument("--workers", type=int, default=0, help="HABLA_ENGINE_WORKERS")
    parser.add_argument("--users", type=int, default=200, help="short conversations added")
    parser.add_argument(
        "--no-flat", dest="flat", action="store_false", help="HABLA_FLAT_HISTORY=false"
    )
    parser.add_argument("--skip-rasa", action="store_true")
    args = parser.parse_args()
    model = ensure_model(PROJECT, PROJECT / ".habla" / "models")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"habla: one conversation of {args.turns} turns", flush=True)
        rows.append(await bench_habla(model, args, Path(tmp)))
        print(table(rows), flush=True)
        if not args.skip_rasa:
            print(f"bare rasa run: one conversation of {args.rasa_turns} turns", flush=True)
            rows.append(await bench_rasa(model, args, Path(tmp)))
    print(f"\none user, turns one after another, {os.cpu_count()} CPUs\n")
    print(table(rows))
    print("\nheld in memory per cached conversation (tracemalloc)\n")
    print(memory_table(args.held))
    out = PROJECT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "growth.json").write_text(json.dumps({"runs": rows, "held": args.held}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    asyncio.run(main())
