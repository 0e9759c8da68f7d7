"""The inspector chat at ``/`` in a real headless Chromium (Debian's ``chromium``,
driven over the DevTools protocol: tests/cdp.py).

A text turn shows the intent, entities, language decision, changed slots and actions,
and every reply as Twilio WhatsApp, the Cloud API and a call render it; a voice note
recorded from Chromium's fake microphone (a real speech clip) is transcribed by the
local Whisper and answered with a voice note the page can play; the language picker
and a new conversation work; and without the token the page is a plain chat.
Screenshots are written under the test's tmp dir and checked for what they show.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from tests.cdp import Chromium, Page, chromium_binary
from tests.conftest import SHARED_DATA, ServerFactory
from voice.audio import ffmpeg_exe

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        chromium_binary() is None,
        reason="no chromium: install Debian's package (apt-get install chromium; .ci/run does)",
    ),
]

TOKEN = "rest-token"  # tests/conftest.py base_env
CLIP = SHARED_DATA / "speech" / "picovoice-leopard" / "resources" / "audio_samples" / "test.wav"
CLIP_WORDS = {"quilter", "apostle", "middle", "classes", "glad", "welcome", "gospel"}
HEADER_GREEN = (0x07, 0x5E, 0x54)  # the page's header
CARD_BLUE = (0xF7, 0xFB, 0xFF)  # an inspector card's background


@pytest.fixture(scope="module")
async def microphone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The speech clip as the WAV Chromium's fake microphone plays (48 kHz mono PCM),
    converted now with the bundled ffmpeg; and its length in seconds."""
    out = tmp_path_factory.mktemp("microphone") / "speech.wav"
    argv = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", str(CLIP)]
    argv += ["-ar", "48000", "-ac", "1", "-c:a", "pcm_s16le", str(out)]
    await asyncio.to_thread(subprocess.run, argv, check=True)
    with wave.open(str(out)) as w:
        seconds = w.getnframes() / w.getframerate()
    return out, seconds


@pytest.fixture(scope="module")
async def browser(
    tmp_path_factory: pytest.TempPathFactory, microphone: tuple[Path, float]
) -> AsyncIterator[Chromium]:
    binary = chromium_binary()
    assert binary is not None
    args = [
        "--use-fake-ui-for-media-stream",  # the microphone permission is granted
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone[0]}%noloop",  # the clip, once
        "--autoplay-policy=no-user-gesture-required",
    ]
    async with Chromium(binary, tmp_path_factory.mktemp("chromium-profile"), args) as chromium:
        yield chromium


SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "inspector"


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    """Where a test's screenshots go: ``test-artifacts/inspector/<test>/`` (kept after
    ``make test`` for a person to look at; ignored by git)."""
    return SCREENSHOTS / request.node.name


async def open_inspector(browser: Chromium, client: TestClient, token: str = TOKEN) -> Page:
    page = await browser.new_page()
    fragment = f"#token={token}" if token else ""
    await page.goto(str(client.make_url("/")) + fragment)
    await page.wait_for("document.getElementById('language').dataset.ready === '1'")
    return page


async def say(page: Page, text: str) -> dict[str, Any]:
    """Type a message, send it with Enter, and wait for its turn; what it shows."""
    before = await page.evaluate("document.querySelectorAll('.turn').length")
    await page.type("#text", text)
    await page.press_enter()
    return await last_turn(page, before)


async def last_turn(page: Page, before: int) -> dict[str, Any]:
    await page.wait_for(
        f"document.querySelectorAll('.turn').length > {before} && "
        "[...document.querySelectorAll('.turn')].pop().dataset.state !== 'waiting'",
        timeout_s=180,
    )
    return await page.evaluate(
        """(() => {
        const turn = [...document.querySelectorAll('.turn')].pop();
        const text = (sel) => [...turn.querySelectorAll(sel)].map(e => e.textContent);
        const row = (cls) => { const r = turn.querySelector('.inspect .' + cls + ' .value');
                               return r ? r.textContent : null; };
        return {
          state: turn.dataset.state,
          user: text('.msg.user')[0],
          transcript: text('.transcript')[0] || null,
          bot: [...turn.querySelectorAll('.msg.bot')].map(m => m.firstChild &&
                 m.firstChild.nodeType === 3 ? m.firstChild.textContent : ''),
          buttons: text('.msg.bot .buttons button'),
          intent: row('intent'), entities: row('entities'), language: row('language'),
          slots: row('slots'), actions: row('actions'), voice_in: row('voice-in'),
          voice_out: row('voice-out'),
          twilio: text('.preview-twilio'), whatsapp: text('.preview-whatsapp'),
          call: text('.preview-call'),
          wa_buttons: text('.preview-whatsapp .wa-button'),
          audio: [...turn.querySelectorAll('audio.reply-audio')].map(a => a.src.slice(0, 30)),
          errors: text('.error'),
        };
    })()"""
    )


async def check_screenshot(page: Page, path: Path, selector: str) -> None:
    """The screenshot shows the page: the header's green at its top, and the element
    ``selector`` (found in the DOM at screenshot time, inside the viewport) with its
    own background where the DOM says it is; and it is not a blank image."""
    await page.evaluate(
        f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}})"
    )
    box = await page.evaluate(
        f"""(() => {{ const r = document.querySelector({json.dumps(selector)})
                        .getBoundingClientRect();
            return {{left: r.left, top: r.top, width: r.width, height: r.height,
                     vw: innerWidth, vh: innerHeight}}; }})()"""
    )
    data = await page.screenshot(path)
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.size == (box["vw"], box["vh"]), image.size
    pixels = np.asarray(image).astype(int)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100
    assert np.abs(pixels[4, 4] - HEADER_GREEN).max() <= 8, pixels[4, 4]
    assert box["top"] >= 0 and box["top"] + 10 < box["vh"] and box["width"] > 100
    x, y = int(box["left"]) + 4, int(box["top"]) + 4  # inside its padding
    expected = CARD_BLUE if "inspect" in selector else None
    if expected is not None:
        assert np.abs(pixels[y, x] - expected).max() <= 8, (pixels[y, x], box)


async def test_a_text_turn_shows_the_turn_and_three_previews(
    make_server: ServerFactory, browser: Chromium, shots: Path
) -> None:
    client, _ = await make_server()
    page = await open_inspector(browser, client)
    turn = await say(page, "hi")
    assert turn["state"] == "answered", turn
    assert turn["bot"][0].startswith("Hi!") and turn["buttons"][:2] == ["Opening hours", "Shipping"]
    assert re.fullmatch(r"greet \((0\.\d+|1)\)", turn["intent"]), turn["intent"]
    assert turn["language"].startswith("en: set (")  # the first message names the language
    # the language slot starts as en (domain.yml); each typed message's sentiment is set
    assert turn["slots"] == 'sentiment: ∅ → "neutral"', turn["slots"]
    assert "utter_greet" in turn["actions"]
    # one reply, as each channel renders it (channels/twilio.py, graph.py, call_text.py)
    assert "1. Opening hours\n2. Shipping\n3. Talk to a person" in turn["twilio"][0]
    assert turn["wa_buttons"] == ["Opening hours", "Shipping", "Talk to a person"]
    assert '"type": "button"' in turn["whatsapp"][0]  # the Graph JSON, folded
    assert "For Opening hours, press 1. For Shipping, press 2." in turn["call"][0]
    await check_screenshot(page, shots / "greet.png", ".turn:last-child .inspect")

    turn = await say(page, "where is my order AB12345")
    assert turn["intent"].startswith("order_status (")
    assert "order_number=AB12345" in turn["entities"]
    assert turn["language"].startswith("en → en: kept (")
    assert 'order_number: ∅ → "AB12345"' in turn["slots"]
    assert "order_status_form" in turn["actions"] and "action_order_status" in turn["actions"]
    assert "has shipped" in turn["bot"][0] and "has shipped" in turn["call"][0]
    await check_screenshot(page, shots / "order.png", ".turn:last-child .inspect")


async def test_a_voice_note_from_the_microphone_is_heard_and_answered_with_audio(
    make_server: ServerFactory,
    browser: Chromium,
    microphone: tuple[Path, float],
    shots: Path,
) -> None:
    # no public URL: the voice reply comes back inside the response (a data: URL)
    env = {"HABLA_STT": "whisper", "HABLA_TTS": "espeak", "HABLA_PUBLIC_URL": ""}
    client, _ = await make_server(env=env)
    page = await open_inspector(browser, client)
    before = await page.evaluate("document.querySelectorAll('.turn').length")
    await page.click("#record")
    await page.wait_for("document.getElementById('record').dataset.recording === '1'")
    # the fake microphone plays the clip once from the start of the capture
    await page.wait_for(
        f"Number(document.getElementById('rec-time').dataset.seconds) >= {microphone[1] + 0.4}",
        timeout_s=60,
    )
    await page.click("#record")
    turn = await last_turn(page, before)
    assert turn["state"] == "answered", turn
    heard = set(turn["transcript"].lower().replace(".", " ").replace(",", " ").split())
    assert len(heard & CLIP_WORDS) >= 4, turn["transcript"]
    assert "whisper" in turn["voice_in"] and "(en," in turn["voice_in"]
    assert turn["voice_out"].startswith("espeak")
    assert turn["audio"] and turn["audio"][0].startswith("data:audio/ogg;base64,")
    assert turn["bot"][1], turn  # and the text (HABLA_VOICE_REPLY_MODE voice+text)
    # the browser decodes the voice reply: it has a duration
    duration = await page.wait_for(
        "(() => { const a = [...document.querySelectorAll('audio.reply-audio')].pop();"
        " return a.readyState >= 1 && a.duration > 0.3 ? a.duration : null; })()"
    )
    assert duration > 0.3
    await check_screenshot(page, shots / "voice.png", ".turn:last-child .inspect")


async def test_the_language_picker_sets_the_conversation_language(
    make_server: ServerFactory, browser: Chromium, shots: Path
) -> None:
    client, runtime = await make_server()
    page = await open_inspector(browser, client)
    options = await page.evaluate(
        "[...document.querySelectorAll('#language option')].map(o => o.value)"
    )
    assert options == ["", "en", "es", "pt"]
    await page.evaluate(
        "(() => { const s = document.getElementById('language'); s.value = 'es';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    await page.wait_for("document.querySelector('.note.language-set')")
    sender = await page.evaluate("document.getElementById('who').textContent")
    assert await runtime.language(sender) == "es"
    turn = await say(page, "hello")  # English, yet the chosen language sticks
    assert turn["bot"][0].startswith("¡Hola!"), turn
    assert turn["language"].startswith("es → es: kept (sticky")
    assert "Para Horario, pulse 1." in turn["call"][0]  # the call speaks Spanish too
    await check_screenshot(page, shots / "language.png", ".turn:last-child .inspect")


async def test_restart_and_a_new_conversation(
    make_server: ServerFactory, browser: Chromium, shots: Path
) -> None:
    client, _ = await make_server()
    page = await open_inspector(browser, client)
    await say(page, "where is my order")  # the form asks for the order number
    first = await page.evaluate("document.getElementById('who').textContent")
    before = await page.evaluate("document.querySelectorAll('.turn').length")
    await page.click("#restart")
    turn = await last_turn(page, before)
    assert turn["user"] == "/restart" and "action_restart" in turn["actions"]
    await page.click("#new")
    await page.wait_for("document.querySelectorAll('.turn').length === 0")
    second = await page.evaluate("document.getElementById('who').textContent")
    assert second != first and second.startswith("dev-")
    turn = await say(page, "hola")
    assert turn["language"].startswith("es: set (")  # a conversation with no language yet
    assert turn["bot"][0].startswith("¡Hola!")
    await check_screenshot(page, shots / "new.png", ".turn:last-child .inspect")


async def test_without_the_token_the_page_is_a_plain_chat(
    make_server: ServerFactory, browser: Chromium, shots: Path
) -> None:
    # a local development server: loopback, no public URL, no token: the chat answers
    client, _ = await make_server(env={"HABLA_REST_TOKEN": "", "HABLA_PUBLIC_URL": ""})
    page = await open_inspector(browser, client, token="")
    assert "HABLA_REST_TOKEN" in await page.evaluate(
        "document.getElementById('notice').textContent"
    )
    turn = await say(page, "hi")
    assert turn["state"] == "answered" and turn["bot"][0].startswith("Hi!")
    assert turn["intent"] is None and not turn["twilio"]  # no inspector without the token
    # and the server refuses the turn's record to anyone without the token
    status = await page.evaluate(
        """fetch('/webhooks/rest/webhook', {method: 'POST', headers: {'Content-Type':
           'application/json'}, body: JSON.stringify({sender: 'x', message: 'hi',
           debug: true})}).then(r => r.status)"""
    )
    assert status == 403
    await check_screenshot(page, shots / "no-token.png", ".turn:last-child")
