"""Phone calls in stream mode, over the wire: the fake of Twilio's side opens the media
stream with a signed upgrade, streams real speech as μ-law 8 kHz at real-time pace,
plays what habla sends, echoes marks when their audio has played and honours clear."""

from __future__ import annotations

import wave
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from habla.server import Runtime
from runtime.errors import SpeechError
from runtime.settings import Settings
from tests.conftest import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    PUBLIC_URL,
    SHARED_DATA,
    STRIPE_KEY,
    WHSEC,
    ServerFactory,
    whatsapp_env,
)
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.stripe_api import FakeStripeAPI
from tests.fakes.twilio_call import FakeCall
from tests.fakes.twilio_stream import FakeMediaStream
from tests.test_whatsapp import envelope, post, text_msg
from voice.stt.base import SpeechToText, Transcript

LEOPARD = SHARED_DATA / "speech" / "picovoice-leopard" / "resources" / "audio_samples"
STREAM_PATH = "/webhooks/twilio_voice/stream"
WSS = PUBLIC_URL.replace("https://", "wss://") + STREAM_PATH
CALLER = "+34600555111"


class HeardSTT(SpeechToText):
    """Hears what the test says the caller said, for each utterance the VAD found in the
    real speech streamed (HABLA_STT=tests.test_call_stream.HeardSTT)."""

    name: ClassVar[str] = "heard"
    script: ClassVar[list[tuple[str, str]]] = []
    utterances: ClassVar[list[int]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> HeardSTT:
        return cls()

    async def transcribe(
        self, audio: bytes, content_type: str, languages: Sequence[str]
    ) -> Transcript:
        self.utterances.append(len(audio))
        text, language = self.script.pop(0) if self.script else ("", "")
        if text == "!down":
            raise SpeechError("heard: the engine is down", transient=True)
        return Transcript(text, language, 0.9, 1.0, self.name, 0.99)


def speech(name: str = "test_es.wav", seconds: float = 2.5) -> Any:
    """A real recording's first seconds as 16 kHz float32 samples."""
    with wave.open(str(LEOPARD / name)) as w:
        raw = w.readframes(w.getnframes())
        rate = w.getframerate()
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    assert rate == 16000
    return samples[: int(seconds * rate)]


@pytest.fixture
async def server(make_server: ServerFactory) -> tuple[TestClient, Runtime]:
    HeardSTT.script.clear()
    HeardSTT.utterances.clear()
    env = {
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "HABLA_CALL_MODE": "stream",
        "HABLA_STT": "tests.test_call_stream.HeardSTT",
        "HABLA_TTS": "espeak",
        "HABLA_CALL_TRANSFER_NUMBER": "+34910000000",
    }
    return await make_server(env=env)


async def open_stream(client: TestClient, sid: str, caller: str = CALLER) -> FakeMediaStream:
    stream = FakeMediaStream()
    await stream.connect(
        client, STREAM_PATH, WSS, AUTH_TOKEN, {"from": caller}, call_sid="CA" + sid.rjust(32, "0")
    )
    return stream


async def bot_turns(runtime: Runtime, conversation: str) -> list[str]:
    tracker = await runtime.engine.tracker_store.retrieve(conversation)  # type: ignore[union-attr]
    return [e.text for e in tracker.events if type(e).__name__ == "BotUttered"] if tracker else []


async def test_the_call_connects_a_signed_stream(server: tuple[TestClient, Runtime]) -> None:
    client, _ = server
    step = await FakeCall(client, PUBLIC_URL, AUTH_TOKEN, CALLER).start()
    assert (
        '<Connect><Stream url="wss://bot.example.com/webhooks/twilio_voice/stream">' in step.twiml
    )
    assert '<Parameter name="from" value="+34600555111" />' in step.twiml
    assert "step=after_stream" in step.redirect and step.gather is None


@pytest.mark.parametrize("signature", ["bad", "missing"])
async def test_a_forged_stream_is_refused(
    server: tuple[TestClient, Runtime], signature: str
) -> None:
    client, runtime = server
    stream = FakeMediaStream()
    await stream.connect(
        client, STREAM_PATH, WSS, AUTH_TOKEN, {"from": CALLER}, signature=signature
    )
    assert stream.handshake_status == 403 and stream.closed
    assert await bot_turns(runtime, CALLER) == []
    await stream.aclose()


async def test_the_bot_speaks_hears_and_answers_in_the_callers_language(
    server: tuple[TestClient, Runtime],
) -> None:
    client, runtime = server
    stream = await open_stream(client, "1")
    # the greeting, sentence by sentence, each followed by a mark
    await stream.wait_for(lambda s: len(s.marks) >= 2, timeout=60)
    assert stream.heard and all(n.startswith("1.") for n in stream.mark_names)
    HeardSTT.script.append(("hola, ¿a qué hora abrís?", "es"))
    await stream.silence(0.5, realtime=False)
    await stream.play(speech(), realtime=False)
    await stream.silence(1.2, realtime=False)
    await stream.wait_for(lambda s: any(n.startswith("2.") for n in s.mark_names), timeout=60)
    assert HeardSTT.utterances, "the VAD found no utterance in real speech"
    turns = await bot_turns(runtime, CALLER)
    assert any(t and t.startswith("Abrimos") for t in turns), turns
    await stream.hang_up()


async def test_the_caller_cuts_the_bot_off(server: tuple[TestClient, Runtime]) -> None:
    client, runtime = server
    stream = await open_stream(client, "2", "+34600555222")
    await stream.wait_for(lambda s: len(s.marks) >= 1, timeout=60)  # the greeting plays...
    assert stream.pending_audio > 0  # ...and there is more of it to come
    HeardSTT.script.append(("¿cuánto tardan los envíos?", "es"))
    await stream.play(speech(seconds=1.5), realtime=True)  # spoken over the bot
    await stream.wait_for(lambda s: s.clears >= 1, timeout=30)
    assert stream.dropped > 0  # the rest of the greeting was not played
    await stream.silence(1.2, realtime=False)
    await stream.wait_for(lambda s: any(n.startswith("2.") for n in s.mark_names), timeout=60)
    tracker = await runtime.engine.tracker_store.retrieve("+34600555222")  # type: ignore[union-attr]
    said = [e for e in tracker.events if type(e).__name__ == "UserUttered"]
    barge_in = said[-1].metadata["call"]["barge_in"]
    assert barge_in["cut"] and barge_in["heard"]  # what was heard and what was not
    await stream.hang_up()


async def test_a_keypad_digit_picks_a_button_and_goodbye_hangs_up(
    server: tuple[TestClient, Runtime],
) -> None:
    client, runtime = server
    stream = await open_stream(client, "3", "+34600555333")
    await stream.wait_for(lambda s: len(s.marks) >= 1, timeout=60)
    await stream.press("1")  # Opening hours
    await stream.wait_for(lambda s: any(n.startswith("2.") for n in s.mark_names), timeout=60)
    assert any("Monday" in t for t in await bot_turns(runtime, "+34600555333") if t)
    HeardSTT.script.append(("goodbye", "en"))
    await stream.play(speech("test.wav", 2.0), realtime=False)
    await stream.silence(1.2, realtime=False)
    await stream.wait_for(lambda s: s.closed, timeout=60)  # said, played, then closed
    after = FakeCall(client, PUBLIC_URL, AUTH_TOKEN, "+34600555333", call_sid=stream.call_sid)
    step = await after.after_stream()
    assert step.hangup
    await stream.aclose()


async def test_asking_for_a_person_dials_the_number_after_the_stream(
    server: tuple[TestClient, Runtime],
) -> None:
    client, _ = server
    stream = await open_stream(client, "4", "+34600555444")
    await stream.wait_for(lambda s: len(s.marks) >= 1, timeout=60)
    await stream.press("3")  # Talk to a person
    await stream.wait_for(lambda s: s.closed, timeout=60)
    after = FakeCall(client, PUBLIC_URL, AUTH_TOKEN, "+34600555444", call_sid=stream.call_sid)
    step = await after.after_stream()
    assert step.dial == "+34910000000"
    await stream.aclose()


async def test_speech_to_text_down_asks_the_caller_to_say_it_again(
    server: tuple[TestClient, Runtime],
) -> None:
    client, runtime = server
    stream = await open_stream(client, "5", "+34600555555")
    await stream.wait_for(lambda s: len(s.marks) >= 1, timeout=60)
    HeardSTT.script.append(("!down", ""))
    await stream.silence(6.0, realtime=False)  # a quiet line first
    await stream.play(speech(), realtime=False)
    await stream.silence(1.2, realtime=False)
    await stream.wait_for(lambda s: any(n.startswith("2.") for n in s.mark_names), timeout=60)
    tracker = await runtime.engine.tracker_store.retrieve("+34600555555")  # type: ignore[union-attr]
    said = [e.text for e in tracker.events if type(e).__name__ == "UserUttered"]
    assert said[-1] == "/voice_unclear"  # answered ("say it again"), not silence
    await stream.hang_up()


def answered(prefix: str) -> Callable[[FakeMediaStream], bool]:
    """The bot's answer with marks named ``prefix...`` was sent."""
    return lambda stream: any(m.startswith(prefix) for m in stream.mark_names)


async def test_a_portuguese_caller_buys_and_gets_the_link_on_whatsapp(
    make_server: ServerFactory, graph_api: FakeGraphAPI, stripe_api: FakeStripeAPI
) -> None:
    HeardSTT.script.clear()
    env = whatsapp_env(graph_api.url) | {
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "HABLA_CALL_MODE": "stream",
        "HABLA_STT": "tests.test_call_stream.HeardSTT",
        "HABLA_TTS": "espeak",
        "HABLA_PAYMENTS": "stripe",
        "STRIPE_API_KEY": STRIPE_KEY,
        "STRIPE_WEBHOOK_SECRET": WHSEC,
        "HABLA_STRIPE_API_BASE": stripe_api.url,
    }
    client, runtime = await make_server(env=env)
    buyer = "+5511987654321"
    # they wrote on WhatsApp today, so the bot may write there (WhatsApp's 24-hour rule)
    resp = await post(client, envelope([text_msg(buyer.lstrip("+"), "olá")]))
    assert resp.status == 200 and await runtime.dispatcher.wait_idle(60)
    graph_api.sent.clear()
    stream = await open_stream(client, "6", buyer)
    await stream.wait_for(lambda s: len(s.marks) >= 1, timeout=60)
    for turn, words in enumerate(("olá, quanto custa a caneca?", "quero comprar uma caneca")):
        HeardSTT.script.append((words, "pt"))
        await stream.play(speech("test_pt.wav", 2.0), realtime=False)
        await stream.silence(1.2, realtime=False)
        await stream.wait_for(answered(f"{turn + 2}."), timeout=60)
    turns = [t for t in await bot_turns(runtime, buyer) if t]
    assert any("12,50 EUR" in t and "caneca" in t.lower() for t in turns), turns
    HeardSTT.script.append(("sim", "pt"))
    await stream.play(speech("test_pt.wav", 1.0), realtime=False)
    await stream.silence(1.2, realtime=False)
    [sent] = await graph_api.wait_for(1)
    assert sent["to"] == buyer.lstrip("+") and sent["type"] == "text"
    assert sent["text"]["body"].startswith("Aqui está o link de pagamento do pedido HB")
    [session] = stripe_api.sessions.values()
    assert session["url"] in sent["text"]["body"]
    turns = [t for t in await bot_turns(runtime, buyer) if t]
    assert any(t.startswith("Enviei pelo WhatsApp o link") for t in turns), turns
    await stream.hang_up()
