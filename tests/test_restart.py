"""A restart keeps conversations, and messages acknowledged before a stop are not lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from habla import server
from habla.server import RUNTIME, create_app
from runtime.coordination import SQLiteInbox
from runtime.messages import InboundMessage
from runtime.settings import load_settings
from runtime.sqlite import SQLite
from tests.conftest import (
    BOT_NUMBER,
    PROJECT,
    PUBLIC_URL,
    ServerFactory,
    base_env,
    free_port,
    post_twilio,
    sign,
    whatsapp_form,
)
from tests.fakes.twilio_api import FakeTwilioAPI

USER = "+5511987654321"


async def _start_server(
    env: dict[str, str], port: int, *, ready: bool = True
) -> asyncio.subprocess.Process:
    """``habla run`` until it is ready (its URLs printed), or only until it listens
    (``ready=False``: the model is still loading)."""
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

    marker = "Press Ctrl-C to stop" if ready else "habla is listening"

    async def read_banner() -> None:
        while marker not in (banner or [""])[-1]:
            line = (await stdout.readline()).decode()
            if not line:
                raise AssertionError("server exited:\n" + "".join(banner))
            banner.append(line)

    await asyncio.wait_for(read_banner(), 180)
    text = "".join(banner)
    if ready:
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
        proc = await _start_server(env, port, ready=False)
        try:
            # the server listens before its model is loaded: the webhook is accepted
            # at once and answered once the model is loaded
            await _say(session, port, "where is my order?")
            sent = await twilio_api.wait_for(1, timeout=180)
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


class SlowToLoad:
    """The shared engine, whose ``load`` waits until the test lets it finish."""

    def __init__(self, engine: Any) -> None:
        self._engine, self.gate = engine, asyncio.Event()

    async def load(self) -> None:
        await self.gate.wait()
        await self._engine.load()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


async def test_webhooks_are_accepted_while_the_model_loads(
    engine: Any, twilio_api: FakeTwilioAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``habla run`` listens as soon as its stores are open: a webhook that arrives while
    the model loads is stored (200) and answered once it is loaded; health says 503
    until then (a load balancer sends it nothing yet), and a caller that waits for its
    answer (REST) gets 503 with Retry-After instead of a hang."""
    slow = SlowToLoad(engine)
    settings = load_settings(env=base_env(tmp_path / "data", twilio_api.url))
    app = create_app(settings, engine=cast(Any, slow), background=True)
    client = TestClient(TestServer(app))
    await client.start_server()  # returns with the model still loading
    runtime = app[RUNTIME]
    try:
        assert (await client.get("/health")).status == 503
        resp = await post_twilio(client, whatsapp_form("when are you open?", USER))
        assert resp.status == 200
        monkeypatch.setattr(server, "READY_WAIT_S", 0.05)
        rest = await client.post(
            "/webhooks/rest/webhook",
            json={"sender": "u1", "message": "hola"},
            headers={"Authorization": "Bearer rest-token"},
        )
        assert rest.status == 503 and rest.headers["Retry-After"] == "5"
        assert twilio_api.sent == [] and not runtime.ready.is_set()

        slow.gate.set()
        assert runtime.loading is not None
        await runtime.loading
        assert (await client.get("/health")).status == 200
        [sent] = await twilio_api.wait_for(1, timeout=60)
        assert sent.to == f"whatsapp:{USER}" and "Monday" in sent.body
        assert await runtime.dispatcher.wait_idle(60)
        assert await runtime.inbox.claim(all_pending=True) == []
    finally:
        await client.close()


OPEN_THE_STORES = """
import asyncio, json, sys

from habla.server import Runtime
from runtime.settings import load_settings


async def main() -> None:
    runtime = Runtime(load_settings(), None)
    await runtime.open()  # all a webhook needs before the server listens
    try:
        greet = runtime.responses("utter_greet")
        print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "greet": greet}))
    finally:
        await runtime.close()


asyncio.run(main())
"""


async def test_the_server_listens_before_tensorflow_is_imported(tmp_path: Path) -> None:
    """What ``habla run`` does before it listens (:meth:`Runtime.open`) must not import
    TensorFlow (10 s here): the example domain has a custom slot type whose module
    imports Rasa's graph, so the domain's responses are read without building a Domain.
    In a fresh interpreter: this one imported TensorFlow long ago."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OPEN_THE_STORES,
        cwd=PROJECT,
        env={**os.environ, **base_env(tmp_path / "data")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["tensorflow"] is False
    # the responses were read all the same, per language
    assert result["greet"]["es"].startswith("¡Hola") and result["greet"][""].startswith("Hi")


def test_a_domain_folder_has_the_responses_rasa_reads(tmp_path: Path) -> None:
    """A domain split into files (``domain/``), one response in two of them: the same
    responses as Rasa's ``Domain.load`` of the folder."""
    from rasa.shared.core.domain import Domain

    from habla.wiring import domain_responses

    folder = tmp_path / "domain"
    (folder / "more").mkdir(parents=True)
    (folder / "a.yml").write_text(
        'version: "3.1"\nresponses:\n  utter_a: [{text: "a"}]\n  utter_twice: [{text: "1"}]\n'
    )
    (folder / "more" / "b.yml").write_text(
        'version: "3.1"\nintents: [greet]\nresponses:\n  utter_b: [{text: "b"}]\n'
        '  utter_twice: [{text: "2"}]\n'
    )
    (folder / "notes.yml").write_text("just: a file that is no domain\n")
    (folder / "readme.txt").write_text("responses: not yaml\n")
    expected = Domain.load(str(folder)).responses
    assert domain_responses(tmp_path) == expected
    assert set(expected) == {"utter_a", "utter_b", "utter_twice"}
