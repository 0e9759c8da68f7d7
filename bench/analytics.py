"""Analytics on 100,000 conversation events: how long ``GET /api/analytics`` takes.

    python -m bench.analytics [--events 100000] [--days 30] [--repeat 5]

Builds a fresh SQLite file shaped like a busy month (the tables the stores create:
``nlu/tracker_store.py`` events, the delivery log, orders and their history, the
outbox, calls, the inbox), every conversation a run of Rasa's usual events (user,
bot, action, slot), user events with the ``parse_data`` and ``metadata`` habla
records (intent ranking, language decision, voice notes, sentiment); then times
``Analytics.report`` over the whole period and over one week, cold (first query, after
the index is built) and warm (median of ``--repeat``), with the CPU time this process
spent (less sensitive than wall time to other work on the machine). Prints one
Markdown table.
Not a test: no figure here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from commerce.orders import SCHEMA as ORDERS
from commerce.outbox import SCHEMA as OUTBOX
from habla.analytics import Analytics, Period
from runtime.calls import SCHEMA as CALLS
from runtime.coordination import INBOX_SCHEMA
from runtime.deliveries import SCHEMA as DELIVERIES

TRACKER = """
CREATE TABLE IF NOT EXISTS events (
    sender_id TEXT NOT NULL, seq INTEGER NOT NULL, type_name TEXT NOT NULL,
    timestamp REAL NOT NULL, data TEXT NOT NULL, PRIMARY KEY (sender_id, seq)
);
CREATE INDEX IF NOT EXISTS events_session ON events (sender_id, type_name, seq);
"""  # nlu/tracker_store.py SCHEMA (not imported: that module imports Rasa, ~5 s)

INTENTS = ["greet", "ask_price", "buy", "order_status", "shipping", "thank", "goodbye"]
LANGS = ["en", "es", "pt", "fr"]
CHANNELS = ["twilio", "whatsapp", "twilio_voice", "rest"]


def user_event(rng: random.Random, ts: float, channel: str, lang: str, n: int) -> dict:
    fallback = rng.random() < 0.08
    best = rng.choice(INTENTS)
    conf = rng.uniform(0.2, 0.5) if fallback else rng.uniform(0.5, 1.0)
    ranking = [{"name": i, "confidence": rng.random() / 10} for i in INTENTS if i != best]
    ranking.insert(0, {"name": best, "confidence": conf})
    intent = {"name": best, "confidence": conf}
    if fallback:
        intent = {"name": "nlu_fallback", "confidence": 0.5}
        ranking.insert(0, intent)
    metadata: dict = {
        "channel": channel,
        "language": {"code": lang, "detected": lang, "confidence": 0.9, "reason": "detected"},
    }
    if rng.random() < 0.1:
        metadata["voice"] = {
            "kind": "audio",
            "duration_s": round(rng.uniform(1, 30), 2),
            "transcript": "hola",
            "language": lang,
            "language_confidence": 0.9,
            "confidence": round(rng.uniform(0.4, 1.0), 3),
            "engine": "whisper",
        }
    parse = {
        "text": f"message {n} call me on +34600111{n % 1000:03d}",
        "intent": intent,
        "entities": [],
        "intent_ranking": ranking,
        "response_selector": {"all_retrieval_intents": [], "default": {}},
        "sentiment": {"label": rng.choice(["negative", "neutral", "positive"]), "score": 0.7},
    }
    return {
        "event": "user",
        "timestamp": ts,
        "metadata": metadata,
        "text": parse["text"],
        "parse_data": parse,
        "input_channel": channel,
        "message_id": f"SM{n:010d}",
    }


def other_events(ts: float, n: int) -> list[dict]:
    return [
        {"event": "user_featurization", "timestamp": ts, "use_text_for_featurization": False},
        {
            "event": "action",
            "timestamp": ts,
            "name": "utter_greet",
            "policy": "RulePolicy",
            "confidence": 1.0,
            "action_text": None,
            "hide_rule_turn": False,
        },
        {
            "event": "bot",
            "timestamp": ts,
            "text": f"answer {n}",
            "data": {
                "elements": None,
                "quick_replies": None,
                "buttons": None,
                "attachment": None,
                "image": None,
                "custom": None,
            },
            "metadata": {"utter_action": "utter_greet"},
        },
        {
            "event": "action",
            "timestamp": ts,
            "name": "action_listen",
            "policy": "RulePolicy",
            "confidence": 1.0,
            "action_text": None,
            "hide_rule_turn": False,
        },
    ]


def build(path: Path, events: int, days: int, start: float, seed: int = 7) -> dict[str, int]:
    rng = random.Random(seed)
    conn = __import__("sqlite3").connect(path)
    for schema in (TRACKER, DELIVERIES, ORDERS, OUTBOX, CALLS, INBOX_SCHEMA):
        conn.executescript(schema)
    rows, outbound, orders, history, jobs = [], [], [], [], []
    written = users = conv = 0
    while written < events:
        conv += 1
        sender = f"+3460{conv:07d}"
        channel, lang = rng.choice(CHANNELS), rng.choice(LANGS)
        ts = start + rng.uniform(0, days * 86400 - 3600)
        seq = 0
        for _ in range(rng.randint(2, 8)):
            ts += rng.uniform(5, 120)
            users += 1
            batch = [user_event(rng, ts, channel, lang, users), *other_events(ts, users)]
            for e in batch:
                rows.append((sender, seq, e["event"], ts, json.dumps(e)))
                seq += 1
            outbound.append((channel, sender, f"P{users}", "sent", "", 1, "{}", ts, ts))
            written += len(batch)
        if rng.random() < 0.2:
            oid = f"o{conv}"
            cur = rng.choice(["EUR", "USD"])
            status = rng.choice(["link_sent", "paid", "refunded"])
            orders.append((oid, sender, channel, sender, lang, "[]", 1999, cur, status, ts, ts))
            trail = ["created", "link_sent", "paid", "refunded"]
            for s in trail[: trail.index(status) + 1]:
                history.append((oid, s, ts, ""))
            jobs.append(
                (f"crm.order:{oid}", "crm.order", sender, rng.choice(["done", "failed"]), ts)
            )
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)
    conn.executemany(
        "INSERT INTO outbound (channel, conversation_id, provider_id, status, error, attempts, "
        "body, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        outbound,
    )
    conn.executemany(
        "INSERT INTO orders (order_id, conversation_id, channel, address, language, items, "
        "amount_minor, currency, status, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        orders,
    )
    conn.executemany(
        "INSERT INTO order_history (order_id, status, at, note) VALUES (?, ?, ?, ?)", history
    )
    conn.executemany(
        "INSERT INTO outbox (key, kind, payload, conversation_id, status, attempts, next_at, "
        "lease_until, last_error, result, created_at, updated_at) "
        "VALUES (?, ?, '{}', ?, ?, 1, 0, 0, '', '{}', ?, 0)",
        jobs,
    )
    failed = [(f"P{i}", "failed", "30008", "Unknown error", start + i) for i in range(1, users, 50)]
    conn.executemany("INSERT INTO delivery_status VALUES (?, ?, ?, ?, ?)", failed)
    conn.commit()
    conn.close()
    return {"events": len(rows), "user_events": users, "conversations": conv, "orders": len(orders)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "habla.sqlite3"
        first = Period.parse("2026-10-01", "2026-10-01")
        began = time.perf_counter()
        counts = build(path, args.events, args.days, first.start)
        built = time.perf_counter() - began
        analytics = Analytics(path)
        began = time.perf_counter()
        await analytics.setup()
        indexed = time.perf_counter() - began
        last = datetime_day(first.start + (args.days - 1) * 86400)
        periods = {
            f"all {args.days} days": Period.parse("2026-10-01", last),
            "one week": Period.parse("2026-10-08", "2026-10-14"),
        }
        print(
            f"{counts['events']:,} events ({counts['user_events']:,} user messages, "
            f"{counts['conversations']:,} conversations, {counts['orders']:,} orders), "
            f"{path.stat().st_size / 1e6:.0f} MB; built in {built:.1f} s, "
            f"index built in {indexed * 1000:.0f} ms\n"
        )
        print("| period | messages counted | first query | median of repeats | CPU (median) |")
        print("|---|---:|---:|---:|---:|")
        for name, period in periods.items():
            times, cpu = [], []
            report = {}
            for _ in range(args.repeat + 1):
                t, c = time.perf_counter(), time.process_time()
                report = await analytics.report(period)
                times.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
            print(
                f"| {name} | {report['messages']['total']:,} | {times[0]:.0f} ms "
                f"| {statistics.median(times[1:]):.0f} ms | {statistics.median(cpu[1:]):.0f} ms |"
            )
        await analytics.close()


def datetime_day(ts: float) -> str:
    from habla.analytics import day_of

    return day_of(ts)


if __name__ == "__main__":
    asyncio.run(main())
