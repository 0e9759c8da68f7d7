"""Analytics for operators, computed from what habla already stores.

One read of each embedded store over a period ``[start, end)`` (epoch seconds, days
in UTC):

- the conversation events (``nlu/tracker_store.py``, table ``events``): one indexed
  scan of the period's ``user`` events, narrowed in SQL to the few fields analytics
  reads (``json_extract``: the event JSON is never parsed in Python), then one pass
  in Python: messages and conversations per day and channel, the language of each
  message (``metadata.language``, recorded by ``i18n/stages.py`` DetectLanguage: the
  decided ``code``, the ``detected`` language, the ``reason``) and the switches
  between consecutive messages of a conversation, intents with their confidence
  histograms per language, NLU fallbacks (``nlu_fallback``; the intent it would have
  been is the second of the ranking), voice notes (``metadata.voice``, recorded by
  ``voice/stages.py``: duration, speech-to-text confidence, error) and sentiment
  (``parse_data.sentiment.label`` when a pipeline component sets it);
- the delivery log (``runtime/deliveries.py``): outbound messages per day and channel,
  failures by the provider's error code (SQL ``GROUP BY``);
- orders (``commerce/orders.py``): the funnel and revenue per currency;
- the outbox (``commerce/outbox.py``): CRM and payment writes by kind and status;
- the call log (``runtime/calls.py``): calls and minutes;
- the inbox (``runtime/coordination.py``): accepted messages by status.

The queries run on a connection and thread of their own, in a read transaction (WAL:
they never hold up the turns' writes on the shared database thread). Stores kept in
MongoDB (the tracker store with the delivery log, the order store with the outbox) are
read from there instead: the period's documents through a projection of the same
fields, counted in Python off the event loop. The inbox in Redis is reported in
``unavailable`` (left out).
``bench/analytics.py`` times them on 100,000 events.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from runtime.messages import SYSTEM_PREFIX, mask_phone
from runtime.sqlite import SQLite

DAY_S = 86400
FALLBACK_INTENT = "nlu_fallback"
BUCKETS = 10  # confidence histograms: [0, 0.1), [0.1, 0.2), ... [0.9, 1.0]
FALLBACK_SAMPLES = 50
SENTIMENTS = ("negative", "neutral", "positive")
INDEX = "CREATE INDEX IF NOT EXISTS events_type_time ON events (type_name, timestamp)"

# the period's user messages, narrowed in SQL (one indexed range scan)
USER_EVENTS = f"""
SELECT sender_id, timestamp,
       json_extract(data, '$.input_channel'),
       json_extract(data, '$.message_id'),
       substr(json_extract(data, '$.text'), 1, 1) = '/',
       json_extract(data, '$.parse_data.intent.name'),
       json_extract(data, '$.parse_data.intent.confidence'),
       json_extract(data, '$.metadata.language.code'),
       json_extract(data, '$.metadata.language.detected'),
       json_extract(data, '$.metadata.language.reason'),
       json_extract(data, '$.metadata.language.previous'),
       json_extract(data, '$.metadata.voice.kind'),
       json_extract(data, '$.metadata.voice.confidence'),
       json_extract(data, '$.metadata.voice.duration_s'),
       json_extract(data, '$.metadata.voice.error'),
       json_extract(data, '$.parse_data.sentiment.label'),
       CASE WHEN json_extract(data, '$.parse_data.intent.name') = '{FALLBACK_INTENT}' THEN
         json_extract(data, '$.parse_data.intent_ranking[1].name') END,
       CASE WHEN json_extract(data, '$.parse_data.intent.name') = '{FALLBACK_INTENT}' THEN
         json_extract(data, '$.parse_data.intent_ranking[1].confidence') END,
       CASE WHEN json_extract(data, '$.parse_data.intent.name') = '{FALLBACK_INTENT}' THEN
         json_extract(data, '$.text') END
FROM events
WHERE type_name = 'user' AND timestamp >= ? AND timestamp < ?
ORDER BY sender_id, seq
"""

_PHONE = re.compile(r"\+?\d[\d \-().]{5,}\d")


def mask_text(text: str) -> str:
    """``text`` with every phone-number-like run masked (``runtime.messages.mask_phone``)."""
    return _PHONE.sub(lambda m: mask_phone(re.sub(r"[^\d+]", "", m.group())), text)


def bucket(confidence: float) -> int:
    """The histogram bucket of a confidence in [0, 1] (1.0 goes in the last one)."""
    return min(max(int(confidence * BUCKETS), 0), BUCKETS - 1)


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Period:
    """``[start, end)`` in epoch seconds, whole UTC days."""

    start: float
    end: float

    @classmethod
    def days(cls, first: date, last: date) -> Period:
        """From the start of ``first`` to the end of ``last`` (UTC), both included."""
        if last < first:
            raise ValueError("the period ends before it starts")
        start = datetime(first.year, first.month, first.day, tzinfo=timezone.utc)
        end = datetime(last.year, last.month, last.day, tzinfo=timezone.utc) + timedelta(1)
        return cls(start.timestamp(), end.timestamp())

    @classmethod
    def parse(cls, since: str = "", until: str = "", now: float | None = None) -> Period:
        """``?from=YYYY-MM-DD&to=YYYY-MM-DD`` (both included); the last 30 days by default.
        Raises ValueError for a malformed date or a period over 366 days."""
        today = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc).date()
        last = date.fromisoformat(until) if until else today
        first = date.fromisoformat(since) if since else last - timedelta(29)
        if (last - first).days > 366:
            raise ValueError("the period is longer than 366 days")
        return cls.days(first, last)

    def day_list(self) -> list[str]:
        out, ts = [], self.start
        while ts < self.end:
            out.append(day_of(ts))
            ts += DAY_S
        return out


@dataclass
class _IntentStats:
    hits: int = 0
    fallbacks: int = 0  # messages that fell back whose best guess was this intent
    confidence_sum: float = 0.0
    histogram: list[int] = field(default_factory=lambda: [0] * BUCKETS)


class Analytics:
    """The operator's figures over a period, read from the embedded SQLite file.

    ``unavailable``: the stores that live elsewhere (MongoDB, Redis) and are therefore
    left out, by name (``events``, ``deliveries``, ``orders``, ``outbox``, ``inbox``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        price_intents: Iterable[str] = ("ask_price",),
        unavailable: Iterable[str] = (),
        mongo: Any = None,
        in_mongo: Iterable[str] = (),
    ) -> None:
        """``mongo``: a motor database holding the stores named in ``in_mongo``
        (``events`` and ``deliveries`` with the MongoDB tracker store, ``orders`` and
        ``outbox`` with the MongoDB order store); closed by :meth:`close`."""
        self.path = str(path)
        self.price_intents = tuple(price_intents)
        self.unavailable = frozenset(unavailable)
        self.mongo = mongo
        self.in_mongo = frozenset(in_mongo) if mongo is not None else frozenset()
        self._away = self.unavailable | self.in_mongo  # not read from the SQLite file
        self.db = SQLite(self.path)  # its own connection and thread: readers do not queue

    async def setup(self) -> None:
        """The index the period scan of conversation events needs (the tracker store
        must have created its table first)."""

        def create(conn: sqlite3.Connection) -> None:
            if _has(conn, "events"):
                conn.execute(INDEX)

        await self.db.run(create)
        if "events" in self.in_mongo:
            await self.mongo["events"].create_index(
                [("type_name", 1), ("timestamp", 1)], name="event_type_time"
            )

    async def close(self) -> None:
        await self.db.close()
        if self.mongo is not None:
            self.mongo.client.close()

    async def report(self, period: Period) -> dict[str, Any]:
        """Every figure of the period, JSON-ready."""
        began = time.perf_counter()
        out = await self.db.read(lambda conn: self._report(conn, period))
        if self.in_mongo:
            await self._mongo_report(period, out)
        out["query_ms"] = round((time.perf_counter() - began) * 1000, 1)
        return out

    # ------------------------------------------------------------------ the queries

    def _report(self, conn: sqlite3.Connection, period: Period) -> dict[str, Any]:
        span = (period.start, period.end)
        out: dict[str, Any] = {
            "period": {
                "from": day_of(period.start),
                "to": day_of(period.end - 1),
                "start": period.start,
                "end": period.end,
                "days": period.day_list(),
            },
            "unavailable": sorted(self.unavailable),
        }
        if "events" not in self._away and _has(conn, "events"):
            out.update(self._conversations(conn.execute(USER_EVENTS, span)))
        else:
            out.update(self._conversations([]))
        out["outbound"] = self._outbound(conn, span)
        out["delivery_failures"] = self._delivery_failures(conn, span)
        out["funnel"], out["revenue"] = self._orders(conn, span, out["price_asked"])
        out["outbox"] = self._outbox(conn, span)
        out["calls"] = self._calls(conn, span)
        out["inbox"] = self._inbox(conn, span)
        return out

    def _conversations(self, rows: Iterable[tuple[Any, ...]]) -> dict[str, Any]:
        days: dict[str, Counter[str]] = defaultdict(Counter)  # day → channel → messages
        day_conversations: dict[str, set[str]] = defaultdict(set)
        channels: Counter[str] = Counter()
        conversations: set[str] = set()
        lang_messages: Counter[str] = Counter()
        lang_detected: Counter[str] = Counter()
        lang_switched: Counter[str] = Counter()
        lang_conversations: dict[str, set[str]] = defaultdict(set)
        reasons: Counter[str] = Counter()
        intents: dict[str, _IntentStats] = defaultdict(_IntentStats)
        by_language: dict[tuple[str, str], _IntentStats] = defaultdict(_IntentStats)
        overall = [0] * BUCKETS
        voice = {"notes": 0, "seconds": 0.0, "errors": 0, "confidence_sum": 0.0, "heard": 0}
        voice_channels: Counter[str] = Counter()
        voice_hist = [0] * BUCKETS
        sentiment: dict[str, Counter[str]] = defaultdict(Counter)
        sentiment_lang: dict[str, Counter[str]] = defaultdict(Counter)
        fallbacks: list[dict[str, Any]] = []
        system = nlu_messages = fallback_count = 0
        price: set[str] = set()
        price_messages = 0
        day_cache: dict[int, str] = {}
        previous: tuple[str, str] = ("", "")  # (conversation, its last language)
        for (
            sender,
            ts,
            channel,
            message_id,
            trigger,
            intent,
            confidence,
            code,
            detected,
            reason,
            before,
            voice_kind,
            voice_conf,
            voice_dur,
            voice_error,
            feeling,
            guess,
            guess_conf,
            text,
        ) in rows:
            if message_id and str(message_id).startswith(SYSTEM_PREFIX):
                system += 1  # a payment webhook, a delayed link: not a user's message
                continue
            key = int(ts // DAY_S)
            day = day_cache.get(key) or day_cache.setdefault(key, day_of(ts))
            channel = channel or "unknown"
            days[day][channel] += 1
            day_conversations[day].add(sender)
            channels[channel] += 1
            conversations.add(sender)
            lang = code or "unknown"
            lang_messages[lang] += 1
            lang_conversations[lang].add(sender)
            if detected:
                lang_detected[detected] += 1
            if reason:
                reasons[reason] += 1
            if code:
                # the language before this message, as DetectLanguage recorded it, else
                # the conversation's previous message in the period
                if not before and previous[0] == sender:
                    before = previous[1]
                if before and before != code:
                    lang_switched[code] += 1
                previous = (sender, code)
            if voice_kind:
                voice["notes"] += 1
                voice_channels[channel] += 1
                voice["seconds"] += float(voice_dur or 0.0)
                if voice_error:
                    voice["errors"] += 1
                if voice_conf is not None:
                    voice["heard"] += 1
                    voice["confidence_sum"] += float(voice_conf)
                    voice_hist[bucket(float(voice_conf))] += 1
            if feeling in SENTIMENTS:
                sentiment[day][feeling] += 1
                sentiment_lang[lang][feeling] += 1
            if intent in self.price_intents:
                price.add(sender)
                price_messages += 1
            if trigger or not intent:
                continue  # a button's payload or a runtime trigger: no NLU ran
            nlu_messages += 1
            conf = float(confidence or 0.0)
            b = bucket(conf)
            overall[b] += 1
            for stats in (intents[intent], by_language[(intent, lang)]):
                stats.hits += 1
                stats.confidence_sum += conf
                stats.histogram[b] += 1
            if intent == FALLBACK_INTENT:
                fallback_count += 1
                if guess:
                    intents[guess].fallbacks += 1
                    by_language[(guess, lang)].fallbacks += 1
                fallbacks.append(
                    {
                        "at": ts,
                        "conversation": mask_phone(sender),
                        "channel": channel,
                        "language": lang,
                        "text": mask_text(text or ""),
                        "best_guess": guess or "",
                        "confidence": round(float(guess_conf or 0.0), 3),
                    }
                )
        fallbacks.sort(key=lambda f: f["at"], reverse=True)
        heard = voice["heard"]
        return {
            "messages": {
                "total": sum(channels.values()),
                "system": system,
                "per_channel": dict(channels.most_common()),
                "per_day": {d: dict(days[d]) for d in sorted(days)},
            },
            "conversations": {
                "total": len(conversations),
                "per_day": {d: len(day_conversations[d]) for d in sorted(day_conversations)},
            },
            "languages": {
                "messages": dict(lang_messages.most_common()),
                "conversations": {k: len(v) for k, v in sorted(lang_conversations.items())},
                "detected": dict(lang_detected.most_common()),
                "switched": dict(lang_switched.most_common()),
                "reasons": dict(reasons.most_common()),
            },
            "intents": {
                "nlu_messages": nlu_messages,
                "fallbacks": fallback_count,
                "fallback_rate": round(fallback_count / nlu_messages, 4) if nlu_messages else 0.0,
                "histogram": overall,
                "top": [
                    _intent_json(name, s)
                    for name, s in sorted(intents.items(), key=lambda kv: (-kv[1].hits, kv[0]))
                ],
                "by_language": [
                    {**_intent_json(name, s), "language": lang}
                    for (name, lang), s in sorted(
                        by_language.items(), key=lambda kv: (kv[0][0], -kv[1].hits, kv[0][1])
                    )
                ],
            },
            "fallback_messages": fallbacks[:FALLBACK_SAMPLES],
            "voice": {
                "notes": voice["notes"],
                "minutes": round(voice["seconds"] / 60.0, 2),
                "errors": voice["errors"],
                "per_channel": dict(voice_channels.most_common()),
                "stt_confidence_mean": round(voice["confidence_sum"] / heard, 3) if heard else None,
                "stt_confidence_histogram": voice_hist,
            },
            "sentiment": {
                "per_day": {d: _feelings(sentiment[d]) for d in sorted(sentiment)},
                "per_language": {k: _feelings(v) for k, v in sorted(sentiment_lang.items())},
            },
            "price_asked": {"messages": price_messages, "conversations": len(price)},
        }

    def _outbound(self, conn: sqlite3.Connection, span: tuple[float, float]) -> dict[str, Any]:
        if "deliveries" in self._away or not _has(conn, "outbound"):
            return {"total": 0, "per_day": {}, "per_status": {}}
        per_day: dict[str, dict[str, int]] = defaultdict(dict)
        total = 0
        for day, channel, n in conn.execute(
            "SELECT date(created_at, 'unixepoch'), channel, COUNT(*) FROM outbound "
            "WHERE created_at >= ? AND created_at < ? GROUP BY 1, 2 ORDER BY 1, 2",
            span,
        ):
            per_day[day][channel] = n
            total += n
        statuses = conn.execute(
            "SELECT status, COUNT(*) FROM outbound WHERE created_at >= ? AND created_at < ? "
            "GROUP BY status ORDER BY 2 DESC, 1",
            span,
        ).fetchall()
        return {"total": total, "per_day": dict(per_day), "per_status": dict(statuses)}

    def _delivery_failures(
        self, conn: sqlite3.Connection, span: tuple[float, float]
    ) -> list[dict[str, Any]]:
        """Failed or undelivered messages by the provider's error code (one per message
        and code), and sends no provider accepted (``not_sent``)."""
        if "deliveries" in self._away or not _has(conn, "outbound"):
            return []
        rows = conn.execute(
            "SELECT error_code, COUNT(DISTINCT provider_id), MAX(error) FROM delivery_status "
            "WHERE status IN ('failed', 'undelivered') AND at >= ? AND at < ? "
            "GROUP BY error_code ORDER BY 2 DESC, 1",
            span,
        ).fetchall()
        out = [
            {"code": c or "unknown", "count": n, "error": mask_text(e or "")} for c, n, e in rows
        ]
        row = conn.execute(
            "SELECT COUNT(*), MAX(error) FROM outbound WHERE status = 'failed' "
            "AND provider_id IS NULL AND created_at >= ? AND created_at < ?",
            span,
        ).fetchone()
        if row[0]:
            out.append({"code": "not_sent", "count": row[0], "error": mask_text(row[1] or "")})
        return out

    def _orders(
        self, conn: sqlite3.Connection, span: tuple[float, float], price: dict[str, int]
    ) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """The funnel of the period's orders (each counted at every status it reached)
        and, per currency, what was paid, refunded and kept."""
        funnel = {"price_asked": price["conversations"], "ordered": 0, "link_sent": 0}
        funnel |= {"paid": 0, "refunded": 0}
        if "orders" in self._away or not _has(conn, "orders"):
            return funnel, []
        reached = (
            "SELECT o.order_id, o.currency, o.amount_minor, "
            "MAX(h.status = 'link_sent') AS link, MAX(h.status = 'paid') AS paid, "
            "MAX(h.status = 'refunded') AS refunded FROM orders o "
            "LEFT JOIN order_history h ON h.order_id = o.order_id "
            "WHERE o.created_at >= ? AND o.created_at < ? GROUP BY o.order_id"
        )
        row = conn.execute(
            f"SELECT COUNT(*), SUM(link), SUM(paid), SUM(refunded) FROM ({reached})", span
        ).fetchone()
        funnel |= {
            "ordered": row[0] or 0,
            "link_sent": row[1] or 0,
            "paid": row[2] or 0,
            "refunded": row[3] or 0,
        }
        revenue = [
            {
                "currency": cur,
                "orders_paid": n,
                "paid_minor": paid or 0,
                "refunded_minor": refunded or 0,
                "net_minor": (paid or 0) - (refunded or 0),
            }
            for cur, n, paid, refunded in conn.execute(
                "SELECT currency, SUM(paid), SUM(amount_minor * paid), "
                f"SUM(amount_minor * refunded) FROM ({reached}) WHERE paid "
                "GROUP BY currency ORDER BY 3 DESC, 1",
                span,
            )
        ]
        return funnel, revenue

    def _outbox(self, conn: sqlite3.Connection, span: tuple[float, float]) -> dict[str, Any]:
        """CRM and payment writes of the period by kind and status, with the latest
        failures; ``pending_now``: every write still waiting, whenever it was made."""
        empty: dict[str, Any] = {"by_kind": {}, "pending_now": 0, "failed": []}
        if "outbox" in self._away or not _has(conn, "outbox"):
            return empty
        by_kind: dict[str, dict[str, int]] = defaultdict(dict)
        for kind, status, n in conn.execute(
            "SELECT kind, status, COUNT(*) FROM outbox WHERE created_at >= ? AND created_at < ? "
            "GROUP BY 1, 2 ORDER BY 1, 2",
            span,
        ):
            by_kind[kind][status] = n
        pending = conn.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'").fetchone()
        failed = [
            {"key": k, "kind": kind, "attempts": a, "error": mask_text(e), "at": at}
            for k, kind, a, e, at in conn.execute(
                "SELECT key, kind, attempts, last_error, updated_at FROM outbox "
                "WHERE status = 'failed' AND created_at >= ? AND created_at < ? "
                "ORDER BY updated_at DESC LIMIT 20",
                span,
            )
        ]
        return {"by_kind": dict(by_kind), "pending_now": pending[0], "failed": failed}

    def _calls(self, conn: sqlite3.Connection, span: tuple[float, float]) -> dict[str, Any]:
        if not _has(conn, "calls"):
            return {"total": 0, "minutes": 0.0, "per_language": {}, "ended_by": {}}
        total, seconds = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(duration_s), 0) FROM calls "
            "WHERE started_at >= ? AND started_at < ?",
            span,
        ).fetchone()
        per_language = conn.execute(
            "SELECT language, COUNT(*) FROM calls WHERE started_at >= ? AND started_at < ? "
            "GROUP BY 1 ORDER BY 2 DESC, 1",
            span,
        ).fetchall()
        ended_by = conn.execute(
            "SELECT ended_by, COUNT(*) FROM calls WHERE started_at >= ? AND started_at < ? "
            "GROUP BY 1 ORDER BY 2 DESC, 1",
            span,
        ).fetchall()
        return {
            "total": total,
            "minutes": round(float(seconds) / 60.0, 2),
            "per_language": {(k or "unknown"): n for k, n in per_language},
            "ended_by": {(k or "in_progress"): n for k, n in ended_by},
        }

    def _inbox(self, conn: sqlite3.Connection, span: tuple[float, float]) -> dict[str, int]:
        if "inbox" in self._away or not _has(conn, "inbox"):
            return {}
        return dict(
            conn.execute(
                "SELECT status, COUNT(*) FROM inbox WHERE received_at >= ? AND received_at < ? "
                "GROUP BY 1 ORDER BY 1",
                span,
            ).fetchall()
        )

    # ------------------------------------------------------------------ MongoDB

    async def _mongo_report(self, period: Period, out: dict[str, Any]) -> None:
        """The same figures from the stores kept in MongoDB: the period's documents,
        narrowed by a projection, counted off the event loop."""
        span = {"$gte": period.start, "$lt": period.end}
        db = self.mongo
        if "events" in self.in_mongo:
            cursor = (
                db["events"]
                .find({"type_name": "user", "timestamp": span}, EVENT_FIELDS)
                .sort([("sender_id", 1), ("seq", 1)])
            )
            docs = [d async for d in cursor]
            out.update(await asyncio.to_thread(lambda: self._conversations(map(_event_row, docs))))
        if "deliveries" in self.in_mongo:
            cursor = db["outbound"].find(
                {"$or": [{"created_at": span}, {"statuses.at": span}]},
                {"_id": False, "body": False},
            )
            docs = [d async for d in cursor]
            out["outbound"], out["delivery_failures"] = _mongo_outbound(docs, period)
        if "orders" in self.in_mongo:
            cursor = db["orders"].find(
                {"created_at": span},
                {"_id": False, "currency": True, "amount_minor": True, "history": True},
            )
            out["funnel"], out["revenue"] = _mongo_orders(
                [d async for d in cursor], out["price_asked"]
            )
        if "outbox" in self.in_mongo:
            cursor = db["outbox"].find(
                {"created_at": span},
                {"_id": False, "payload": False, "result": False},
            )
            pending = await db["outbox"].count_documents({"status": "pending"})
            out["outbox"] = _mongo_outbox([d async for d in cursor], pending)


EVENT_FIELDS = {
    "_id": False,
    "sender_id": True,
    "timestamp": True,
    "data.input_channel": True,
    "data.message_id": True,
    "data.text": True,
    "data.parse_data.intent": True,
    "data.parse_data.intent_ranking": True,
    "data.parse_data.sentiment": True,
    "data.metadata.language": True,
    "data.metadata.voice": True,
}


def _event_row(doc: dict[str, Any]) -> tuple[Any, ...]:
    """A MongoDB event as the row :data:`USER_EVENTS` reads from SQLite."""
    data = doc.get("data") or {}
    parse = data.get("parse_data") or {}
    intent = parse.get("intent") or {}
    meta = data.get("metadata") or {}
    language = meta.get("language") or {}
    voice = meta.get("voice") or {}
    text = data.get("text") or ""
    fell_back = intent.get("name") == FALLBACK_INTENT
    ranking = parse.get("intent_ranking") or []
    guess = ranking[1] if fell_back and len(ranking) > 1 else {}
    return (
        doc["sender_id"],
        doc["timestamp"],
        data.get("input_channel"),
        data.get("message_id"),
        text.startswith("/"),
        intent.get("name"),
        intent.get("confidence"),
        language.get("code"),
        language.get("detected"),
        language.get("reason"),
        language.get("previous"),
        voice.get("kind"),
        voice.get("confidence"),
        voice.get("duration_s"),
        voice.get("error"),
        (parse.get("sentiment") or {}).get("label"),
        guess.get("name"),
        guess.get("confidence"),
        text if fell_back else None,
    )


def _mongo_outbound(
    docs: list[dict[str, Any]], period: Period
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    per_day: dict[str, Counter[str]] = defaultdict(Counter)
    statuses: Counter[str] = Counter()
    codes: dict[str, set[str]] = defaultdict(set)
    errors: dict[str, str] = {}
    not_sent, not_sent_error = 0, ""
    for d in docs:
        if period.start <= d["created_at"] < period.end:
            per_day[day_of(d["created_at"])][d["channel"]] += 1
            statuses[d["status"]] += 1
            if d["status"] == "failed" and not d.get("provider_id"):
                not_sent += 1
                not_sent_error = max(not_sent_error, d.get("error") or "")
        for st in d.get("statuses") or []:
            if st["status"] in ("failed", "undelivered") and period.start <= st["at"] < period.end:
                code = st.get("error_code") or "unknown"
                codes[code].add(d.get("provider_id") or "")
                errors[code] = max(errors.get(code, ""), st.get("error") or "")
    failures = [
        {"code": code, "count": len(ids), "error": mask_text(errors[code])}
        for code, ids in sorted(codes.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]
    if not_sent:
        failures.append({"code": "not_sent", "count": not_sent, "error": mask_text(not_sent_error)})
    outbound = {
        "total": sum(statuses.values()),
        "per_day": {day: dict(sorted(c.items())) for day, c in sorted(per_day.items())},
        "per_status": dict(sorted(statuses.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    return outbound, failures


def _mongo_orders(
    docs: list[dict[str, Any]], price: dict[str, int]
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    funnel = {"price_asked": price["conversations"], "ordered": len(docs), "link_sent": 0}
    funnel |= {"paid": 0, "refunded": 0}
    money: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # orders paid, paid, refunded
    for d in docs:
        reached = {h["status"] for h in d.get("history") or []}
        for status in ("link_sent", "paid", "refunded"):
            funnel[status] += status in reached
        if "paid" in reached:
            m = money[d["currency"]]
            m[0] += 1
            m[1] += int(d["amount_minor"])
            m[2] += int(d["amount_minor"]) if "refunded" in reached else 0
    revenue = [
        {
            "currency": cur,
            "orders_paid": n,
            "paid_minor": paid,
            "refunded_minor": refunded,
            "net_minor": paid - refunded,
        }
        for cur, (n, paid, refunded) in sorted(money.items(), key=lambda kv: (-kv[1][1], kv[0]))
    ]
    return funnel, revenue


def _mongo_outbox(docs: list[dict[str, Any]], pending: int) -> dict[str, Any]:
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for d in docs:
        by_kind[d["kind"]][d["status"]] += 1
    failed = sorted(
        (d for d in docs if d["status"] == "failed"), key=lambda d: -d.get("updated_at", 0)
    )[:20]
    return {
        "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
        "pending_now": pending,
        "failed": [
            {
                "key": d["key"],
                "kind": d["kind"],
                "attempts": d["attempts"],
                "error": mask_text(d.get("last_error") or ""),
                "at": d.get("updated_at"),
            }
            for d in failed
        ],
    }


def _has(conn: sqlite3.Connection, table: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        is not None
    )


def _intent_json(name: str, s: _IntentStats) -> dict[str, Any]:
    return {
        "intent": name,
        "hits": s.hits,
        "fallbacks": s.fallbacks,
        "confidence_mean": round(s.confidence_sum / s.hits, 3) if s.hits else None,
        "histogram": s.histogram,
    }


def _feelings(counts: Counter[str]) -> dict[str, int]:
    return {k: counts.get(k, 0) for k in SENTIMENTS}
