"""``/metrics``: Prometheus' text format through the real server, behind its token,
with every process's metrics added up (multi-process mode)."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from commerce.outbox import Outbox
from runtime import metrics
from runtime.calls import CallLog
from runtime.coordination import RedisCoordination, SQLiteInbox
from runtime.errors import PermanentError
from runtime.messages import InboundMessage
from runtime.settings import load_settings
from runtime.sqlite import SQLite
from tests.conftest import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    PROJECT,
    ServerFactory,
    base_env,
    post_twilio,
    whatsapp_form,
)
from tests.fakes.twilio_api import FakeTwilioAPI

USER = "+34600555444"
TOKEN = "metrics-token-0123456789abcdef"


def value(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when it is not there yet)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def families(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


async def scrape(client: TestClient, token: str = TOKEN) -> str:
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return await resp.text()


async def test_a_webhook_turn_is_counted_timed_and_its_reply_and_retry_too(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI
) -> None:
    client, runtime = await make_server(
        env={
            "HABLA_TWILIO_API_BASE": twilio_api.url,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "HABLA_METRICS_TOKEN": TOKEN,
        }
    )
    before = await scrape(client)
    twilio_api.fail_next(503, 20503, "Service Unavailable")  # the send is tried again
    assert (await post_twilio(client, whatsapp_form("hello", USER))).status == 200
    assert await runtime.dispatcher.wait_idle(60)
    assert len(twilio_api.to(f"whatsapp:{USER}")) == 1
    after = await scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("habla_turns_total", channel="twilio", outcome="answered") == 1
    assert grew("habla_deliveries_total", channel="twilio", outcome="sent") == 1
    assert grew("habla_provider_retries_total", family="channel", provider="twilio") == 1
    assert grew("habla_turn_duration_seconds_count", channel="twilio") == 1
    assert grew("habla_turn_duration_seconds_sum", channel="twilio") > 0
    for stage in ("Acknowledge", "ResolveChoice", "DetectLanguage", "Dialogue", "Deliver"):
        assert grew("habla_turn_stage_duration_seconds_count", stage=stage) == 1, stage
    # the stores' gauges, read at scrape time
    assert value(after, "habla_inbox_pending_messages") == 0
    assert {"habla_outbox_jobs", "habla_calls_active", "habla_inbox_pending_messages"} <= (
        families(after)
    )
    assert value(after, "habla_turns_in_progress", channel="twilio") == 0
    assert USER not in after and USER[1:] not in after  # labels never carry a number

    # a status callback is counted by status
    [sent] = twilio_api.to(f"whatsapp:{USER}")
    status = {"MessageSid": sent.sid, "MessageStatus": "delivered"}
    assert (await post_twilio(client, status, path="/webhooks/twilio/status")).status == 204
    final = await scrape(client)
    assert (
        value(final, "habla_delivery_status_reports_total", status="delivered")
        - value(after, "habla_delivery_status_reports_total", status="delivered")
        == 1
    )


async def test_metrics_need_the_token_and_are_closed_without_one(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    client, _ = await make_server(env={"HABLA_METRICS_TOKEN": TOKEN})
    assert (await client.get("/metrics")).status == 403
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 403
    await scrape(client)
    closed, _ = await make_server(env={}, data_dir=tmp_path / "closed")
    assert (await closed.get("/metrics")).status == 403
    empty = await closed.get("/metrics", headers={"Authorization": "Bearer "})
    assert empty.status == 403


CHILD = textwrap.dedent(
    """
    import os, sys
    from runtime import metrics
    metrics.join_from_environment()
    assert str(metrics.directory()) == os.environ["PROMETHEUS_MULTIPROC_DIR"]
    metrics.TURNS.labels("rest", "answered").inc(5)
    metrics.ENGINE_IN_PROGRESS.labels("child").inc()
    print(os.getpid())
    """
)


async def test_another_process_writing_to_the_folder_is_added_up_and_marked_dead(
    make_server: ServerFactory,
) -> None:
    client, _ = await make_server(env={"HABLA_METRICS_TOKEN": TOKEN})
    folder = metrics.directory()
    assert folder is not None and os.environ[metrics.ENV] == str(folder)
    before = await scrape(client)
    child = await asyncio.create_subprocess_exec(  # writes, then exits (as a worker may)
        sys.executable,
        "-c",
        CHILD,
        env=os.environ | {"PYTHONPATH": str(PROJECT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, err.decode()
    pid = int(out.decode().strip())
    after = await scrape(client)
    grew = value(after, "habla_turns_total", channel="rest", outcome="answered") - value(
        before, "habla_turns_total", channel="rest", outcome="answered"
    )
    assert grew == 5
    assert value(after, "habla_engine_turns_in_progress", worker="child") == 1
    metrics.process_gone(pid)  # what the pool does when a worker exits
    gone = await scrape(client)
    assert value(gone, "habla_engine_turns_in_progress", worker="child") == 0
    # its counters stay: counters never go back
    assert value(gone, "habla_turns_total", channel="rest", outcome="answered") == value(
        after, "habla_turns_total", channel="rest", outcome="answered"
    )


async def test_the_store_gauges_count_what_the_stores_hold(tmp_path: Path, redis_url: str) -> None:
    """What /metrics reads at scrape time: pending messages (SQLite and Redis), calls in
    progress by mode, outbox jobs by status."""
    db = SQLite(tmp_path / "g.sqlite3")
    env = base_env(tmp_path / "data") | {
        "HABLA_COORDINATION": "redis",
        "HABLA_REDIS_URL": redis_url,
    }
    shared = await RedisCoordination.from_settings(load_settings(env=env), db)
    try:
        embedded = SQLiteInbox(db, 86400)
        await embedded.setup()
        inboxes = [embedded, shared.inbox]
        for inbox in inboxes:
            before = await inbox.pending_count()
            msgs = [
                InboundMessage("t", f"+3460055500{i}", message_id=f"SMg{i}{id(inbox)}")
                for i in range(3)
            ]
            for msg in msgs:
                assert await inbox.accept(msg)
            await inbox.done(msgs[0])
            assert await inbox.pending_count() - before == 2
        calls = CallLog(db)
        await calls.setup()
        await calls.started("CA1", "+34600555001", "twilio_voice", "gather", "+34600555001")
        await calls.started("CA2", "+34600555002", "twilio_voice", "stream", "+34600555002")
        await calls.started("CA3", "+34600555003", "twilio_voice", "stream", "+34600555003")
        await calls.status("CA3", "completed", 12.0)
        assert await calls.active() == {"gather": 1, "stream": 1}
        outbox = Outbox(db, max_attempts=1, backoff_s=0.01)

        async def refuse(payload: dict[str, object]) -> dict[str, object]:
            raise PermanentError("refused")

        async def accept(payload: dict[str, object]) -> dict[str, object]:
            return {}

        outbox.register("crm.no", refuse)
        outbox.register("crm.yes", accept)
        await outbox.setup()
        await outbox.submit("crm.yes", {}, "k1")
        await outbox.submit("crm.no", {}, "k2")
        await outbox.enqueue("crm.yes", {}, "k3", delay_s=60)
        assert await outbox.counts() == {"done": 1, "failed": 1, "pending": 1}
    finally:
        await shared.close()
        await db.close()
