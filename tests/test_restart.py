"""A restart keeps conversations, and messages acknowledged before a stop are not lost."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from runtime.coordination import SQLiteInbox
from runtime.messages import InboundMessage
from runtime.sqlite import SQLite
from tests.conftest import (
    BOT_NUMBER,
    PROJECT,
    PUBLIC_URL,
    ServerFactory,
    base_env,
    free_port,
    sign,
    whatsapp_form,
)
from tests.fakes.twilio_api import FakeTwilioAPI

USER = "+5511987654321"


async def _start_server(env: dict[str, str], port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "habla.cli",
        "run",
        "--port",
        str(port),
        cwd=PROJECT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    stdout = proc.stdout
    assert stdout is not None
    banner: list[str] = []

    async def read_banner() -> None:
        while "Press Ctrl-C to stop" not in (banner or [""])[-1]:
            line = (await stdout.readline()).decode()
            if not line:
                raise AssertionError("server exited:\n" + "".join(banner))
            banner.append(line)

    await asyncio.wait_for(read_banner(), 180)
    text = "".join(banner)
    assert f"{PUBLIC_URL}/webhooks/twilio/webhook" in text
    assert f"{PUBLIC_URL}/webhooks/twilio/status" in text
    drain = asyncio.get_running_loop().create_task(stdout.read())  # keep the pipe flowing
    _DRAINS.add(drain)
    drain.add_done_callback(_DRAINS.discard)
    return proc


_DRAINS: set[asyncio.Task[bytes]] = set()


async def _say(session: aiohttp.ClientSession, port: int, text: str) -> None:
    form = whatsapp_form(text, USER)
    path = "/webhooks/twilio/webhook"
    resp = await session.post(
        f"http://127.0.0.1:{port}{path}",
        data=form,
        headers={"X-Twilio-Signature": sign(PUBLIC_URL + path, form)},
    )
    assert resp.status == 200


async def test_a_conversation_halfway_through_the_form_continues_after_a_restart(
    tmp_path: Path, twilio_api: FakeTwilioAPI, model_path: Path
) -> None:
    env = base_env(tmp_path / "data", twilio_api.url) | {"HABLA_LOG_LEVEL": "WARNING"}
    port = free_port()
    async with aiohttp.ClientSession() as session:
        proc = await _start_server(env, port)
        try:
            await _say(session, port, "where is my order?")
            sent = await twilio_api.wait_for(1, timeout=60)
            assert "order number" in sent[0].body.lower()
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            assert await asyncio.wait_for(proc.wait(), 60) == 0

        proc = await _start_server(env, port)
        try:
            await _say(session, port, "AB12345")
            sent = await twilio_api.wait_for(2, timeout=60)
            assert "AB12345" in sent[1].body and "shipped" in sent[1].body.lower()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 60) == 0


async def test_messages_acknowledged_before_a_crash_are_processed_on_start(
    make_server: ServerFactory, twilio_api: FakeTwilioAPI, tmp_path: Path
) -> None:
    data = tmp_path / "crashed"
    db = SQLite(data / "habla.sqlite3")
    inbox = SQLiteInbox(db, ttl_s=3600)
    await inbox.setup()
    msg = InboundMessage(
        channel="twilio",
        conversation_id=USER,
        message_id="SMcrashed1",
        text="when are you open?",
        sender=USER,
        reply_to=f"whatsapp:{USER}",
        reply_from=BOT_NUMBER,
    )
    assert await inbox.accept(msg)  # accepted and acknowledged, then the process died
    await db.close()

    _, runtime = await make_server(env=base_env(data, twilio_api.url), data_dir=data)
    assert await runtime.dispatcher.wait_idle(60)
    sent = twilio_api.to(f"whatsapp:{USER}")
    assert len(sent) == 1 and "Monday" in sent[0].body
    assert await runtime.inbox.claim(all_pending=True) == []
    assert not await runtime.inbox.accept(msg)  # and a late redelivery is still a duplicate
