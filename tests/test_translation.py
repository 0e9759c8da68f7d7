"""Machine translation: placeholder protection, each provider's real adapter against a
local fake of its wire protocol, error mapping and the SQLite/Redis caches."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from habla.wiring import build_translator
from i18n.providers import (
    AzureTranslator,
    DeepLTranslator,
    GoogleTranslator,
    LibreTranslateTranslator,
)
from i18n.translation import (
    CachingTranslator,
    Translator,
    protect,
    protected_spans,
    restore,
    translatable,
)
from runtime.providers import TRANSLATORS
from runtime.retry import PermanentError, TransientError
from runtime.settings import Settings, SettingsError
from runtime.sqlite import SQLite
from runtime.translation_cache import RedisTranslationCache, SQLiteTranslationCache
from tests.conftest import free_port
from tests.fakes.translation import (
    FakeAzureTranslator,
    FakeDeepL,
    FakeGoogleTranslate,
    FakeHttpTranslator,
    FakeLibreTranslate,
)

KEY = "test-translator-key-123"
REGION = "westeurope"
PROJECT = "habla-test"
PROVIDERS = ["google", "azure", "deepl", "libretranslate"]

TEXTS = [
    "Hello {name}, your order AB12345 is ready.",
    "The price is 19.90 and shipping costs 4,90 €.",
    "Write to order@shop.example.com or visit https://shop.example.com/order/AB12345?ref=hello&x=1",
    "Hello\nThe order costs 50 EUR, it's SKU-12A",
    '/order{"sku": "SKU-12A"}',
]
EXPECTED_ES = [
    "Hola {name}, tu pedido AB12345 es listo.",
    "El precio es 19.90 y envío cuesta 4,90 €.",
    "Escribe a order@shop.example.com o visita https://shop.example.com/order/AB12345?ref=hello&x=1",
    "Hola\nEl pedido cuesta 50 EUR, it's SKU-12A",
    '/order{"sku": "SKU-12A"}',
]


def settings_for(name: str, url: str = "", key: str = KEY, **i18n: str) -> Settings:
    values = {"translator": name, "translator_url": url, "translator_key": key} | i18n
    return Settings().with_overrides(i18n=values, send={"timeout_s": 2.0})


# ---------------------------------------------------------------- protect / restore


@pytest.mark.parametrize(
    ("text", "spans"),
    [
        ("Hi {name}, welcome", ["{name}"]),
        ("Hi {{ first_name }}!", ["{{ first_name }}"]),
        ("See https://shop.example.com/a?b=1&c=2.", ["https://shop.example.com/a?b=1&c=2"]),
        ("or www.example.com/help, thanks", ["www.example.com/help"]),
        ("Mail ana.perez+shop@example.co.uk now", ["ana.perez+shop@example.co.uk"]),
        ("It costs 19.90.", ["19.90"]),
        ("Shipping 4,90 € today", ["4,90 €"]),
        ("Only 50 EUR", ["50"]),
        ("Only $5 or £3.50", ["$5", "£3.50"]),
        ("Order AB12345 and SKU-12A, item x2", ["AB12345", "SKU-12A", "x2"]),
        ("At 10:30 on 12/05/2025, 15% off", ["10:30", "12/05/2025", "15%"]),
        ("the 2nd at 10am", []),
        ("/order_status", ["/order_status"]),
        ('/buy{"sku": "AB1", "qty": 2}', ['/buy{"sku": "AB1", "qty": 2}']),
        ("and/or 1/2", ["1/2"]),
    ],
)
def test_protected_spans(text: str, spans: list[str]) -> None:
    assert protected_spans(text) == spans
    html_text = protect(text)
    for span in spans:
        assert f'<span translate="no" class="notranslate">{span.replace("&", "&amp;")}</span>' in (
            html_text
        )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "plain words",
        "Tom & Jerry <b>bold</b> \"quoted\" 'single' a < b > c",
        "line one\nline two\n\n  indented\r\nwindows\tTab",
        "&amp; stays literal, &lt;br&gt; too, &#39; and &nbsp",
        "a literal <br> and <br/> and </span>",
        "Hello {name}, order AB12345 costs 4,90 € — see https://x.example/?a=1&b=<2>",
        '/order{"sku": "SKU-12A", "note": "a & b"}',
        "emoji 🎉 ñandú ação",
    ],
)
def test_round_trip_is_exact(text: str) -> None:
    html_text = protect(text)
    assert "\n" not in html_text
    assert restore(html_text) == text


def test_protect_escapes_html_and_marks_newlines() -> None:
    assert protect("a & b <i>\nc") == "a &amp; b &lt;i&gt;<br>c"


def test_restore_accepts_what_providers_send_back() -> None:
    assert restore("It&#39;s &quot;ok&quot;<br/>next<BR />") == 'It\'s "ok"\nnext\n'
    assert (
        restore('Hola <span class="notranslate" translate="no">{name}</span> &amp; co')
        == "Hola {name} & co"
    )


def test_translatable() -> None:
    assert translatable("Hello {name}")
    assert not translatable("{name} 19.90 AB12345 https://x.example")
    assert not translatable("/greet")
    assert not translatable("  ")


# ---------------------------------------------------------------- providers against fakes


@dataclass
class Harness:
    name: str
    fake: Any
    translator: Translator

    @property
    def sent_texts(self) -> list[list[str]]:
        """The texts of every request the fake received."""
        if isinstance(self.fake, FakeGoogleTranslate):
            return [list(r.contents) for r in self.fake.requests]
        out = []
        for r in self.fake.requests:
            body = r.body
            if self.name == "azure":
                out.append([item["Text"] for item in body])
            elif self.name == "deepl":
                out.append(list(body["text"]))
            else:
                out.append(list(body["q"]))
        return out

    def fail_next(self, transient: bool, count: int = 1) -> None:
        if isinstance(self.fake, FakeGoogleTranslate):
            code = grpc.StatusCode.UNAVAILABLE if transient else grpc.StatusCode.INVALID_ARGUMENT
            self.fake.fail_next(code, count)
        else:
            self.fake.fail_next(503 if transient else 400, count)


async def start_harness(name: str, session: aiohttp.ClientSession, key: str = KEY) -> Harness:
    fake: Any
    if name == "google":
        fake = FakeGoogleTranslate(PROJECT)
        settings = settings_for(name, await fake.start(), google_project=PROJECT)
    elif name == "azure":
        fake = FakeAzureTranslator(KEY, REGION)
        settings = settings_for(name, await fake.start(), key, translator_region=REGION)
    else:
        fake = FakeDeepL(KEY) if name == "deepl" else FakeLibreTranslate(KEY)
        settings = settings_for(name, await fake.start(), key)
    translator = build_translator(settings, session)
    assert translator is not None
    await translator.start()
    return Harness(name, fake, translator)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture(params=PROVIDERS)
async def harness(
    request: pytest.FixtureRequest, session: aiohttp.ClientSession
) -> AsyncIterator[Harness]:
    h = await start_harness(request.param, session)
    yield h
    await h.translator.close()
    await h.fake.close()


async def test_translates_and_keeps_protected_spans(harness: Harness) -> None:
    out = await harness.translator.translate(TEXTS, "en", "es")
    assert out == EXPECTED_ES
    # one request; the payload (nothing to translate) is not sent
    assert len(harness.sent_texts) == 1
    assert harness.sent_texts[0] == [protect(t) for t in TEXTS[:4]]


async def test_auto_detect_and_other_targets(harness: Harness) -> None:
    out = await harness.translator.translate(["Hello, the price is 19.90"], "", "pt")
    assert out == ["Olá, o preço é 19.90"]
    back = await harness.translator.translate(["Hola, el pedido AB12345"], "es", "en")
    assert back == ["Hello, the order AB12345"]


async def test_nothing_to_translate_sends_nothing(harness: Harness) -> None:
    assert await harness.translator.translate([], "en", "es") == []
    assert await harness.translator.translate(["Hello"], "en", "en") == ["Hello"]
    assert await harness.translator.translate(["/greet", "19.90", " "], "en", "es") == [
        "/greet",
        "19.90",
        " ",
    ]
    assert harness.sent_texts == []


async def test_surrounding_whitespace_is_kept(harness: Harness) -> None:
    assert await harness.translator.translate(["  Hello\n"], "en", "es") == ["  Hola\n"]


async def test_transient_failure_maps_to_transient_error(harness: Harness) -> None:
    harness.fail_next(transient=True)
    with pytest.raises(TransientError):
        await harness.translator.translate(["Hello"], "en", "es")
    assert await harness.translator.translate(["Hello"], "en", "es") == ["Hola"]


async def test_permanent_failure_maps_to_permanent_error(harness: Harness) -> None:
    harness.fail_next(transient=False)
    with pytest.raises(PermanentError):
        await harness.translator.translate(["Hello"], "en", "es")


@pytest.mark.parametrize("name", ["azure", "deepl", "libretranslate"])
async def test_wrong_key_is_permanent(name: str, session: aiohttp.ClientSession) -> None:
    h = await start_harness(name, session, key="wrong-key")
    try:
        with pytest.raises(PermanentError, match="40[13]"):
            await h.translator.translate(["Hello"], "en", "es")
    finally:
        await h.fake.close()


async def test_google_request() -> None:
    fake = FakeGoogleTranslate(PROJECT)
    translator = GoogleTranslator(
        settings_for("google", await fake.start(), google_project=PROJECT)
    )
    try:
        assert await translator.translate(['It\'s "Hello" {name}'], "en", "es") == [
            'It\'s "Hola" {name}'
        ]
        req = fake.last
        assert req.parent == f"projects/{PROJECT}/locations/global"
        assert req.mime_type == "text/html"
        assert (req.source_language_code, req.target_language_code) == ("en", "es")
        assert list(req.contents) == [protect('It\'s "Hello" {name}')]
        # the routing header the official client adds to every call
        assert fake.metadata[-1]["x-goog-request-params"] == f"parent={req.parent}"
        await translator.translate(["Hello"], "", "es")
        assert fake.last.source_language_code == ""
    finally:
        await translator.close()
        await fake.close()


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.UNAVAILABLE, TransientError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, TransientError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, TransientError),
        (grpc.StatusCode.INTERNAL, TransientError),
        (grpc.StatusCode.INVALID_ARGUMENT, PermanentError),
        (grpc.StatusCode.PERMISSION_DENIED, PermanentError),
        (grpc.StatusCode.UNAUTHENTICATED, PermanentError),
    ],
)
async def test_google_status_mapping(code: grpc.StatusCode, error: type[Exception]) -> None:
    fake = FakeGoogleTranslate(PROJECT)
    translator = GoogleTranslator(
        settings_for("google", await fake.start(), google_project=PROJECT)
    )
    fake.fail_next(code)
    try:
        with pytest.raises(error):
            await translator.translate(["Hello"], "en", "es")
    finally:
        await translator.close()
        await fake.close()


async def test_google_wrong_project_is_permanent() -> None:
    fake = FakeGoogleTranslate(PROJECT)
    translator = GoogleTranslator(
        settings_for("google", await fake.start(), google_project="other")
    )
    try:
        with pytest.raises(PermanentError, match="403"):
            await translator.translate(["Hello"], "en", "es")
    finally:
        await translator.close()
        await fake.close()


async def test_google_refused_connection_is_transient_and_not_retried_by_the_client() -> None:
    translator = GoogleTranslator(
        settings_for("google", f"127.0.0.1:{free_port()}", google_project=PROJECT)
    )
    try:
        # the guard only stops a hang: with the client's own retries on, this call would
        # keep retrying for minutes and end in a RetryError instead of UNAVAILABLE
        with pytest.raises(TransientError) as info:
            await asyncio.wait_for(translator.translate(["Hello"], "en", "es"), 120)
    finally:
        await translator.close()
    assert "RetryError" not in str(info.value) and "Deadline" not in str(info.value)


async def test_azure_request(session: aiohttp.ClientSession) -> None:
    h = await start_harness("azure", session)
    try:
        await h.translator.translate(["Hello {name}"], "en", "es")
        r = h.fake.last
        assert r.headers["Ocp-Apim-Subscription-Key"] == KEY
        assert r.headers["Ocp-Apim-Subscription-Region"] == REGION
        assert r.query == {"api-version": "3.0", "to": "es", "from": "en", "textType": "html"}
        assert r.body == [{"Text": protect("Hello {name}")}]
        await h.translator.translate(["Hello"], "", "es")
        assert "from" not in h.fake.last.query
    finally:
        await h.fake.close()


async def test_azure_rate_limit_carries_retry_after(session: aiohttp.ClientSession) -> None:
    h = await start_harness("azure", session)
    h.fake.fail_next(429)
    try:
        with pytest.raises(TransientError) as info:
            await h.translator.translate(["Hello"], "en", "es")
        assert info.value.retry_after == 1.0
        assert "429000" in str(info.value)
    finally:
        await h.fake.close()


async def test_deepl_request(session: aiohttp.ClientSession) -> None:
    h = await start_harness("deepl", session)
    try:
        await h.translator.translate(["Hello {name}"], "en", "es")
        r = h.fake.last
        assert r.headers["Authorization"] == f"DeepL-Auth-Key {KEY}"
        assert r.body == {
            "text": [protect("Hello {name}")],
            "target_lang": "ES",
            "source_lang": "EN",
            "tag_handling": "html",
        }
        await h.translator.translate(["Hello"], "", "pt")
        assert h.fake.last.body["target_lang"] == "PT-PT"
        assert "source_lang" not in h.fake.last.body
        await h.translator.translate(["Hola"], "es", "en")
        assert h.fake.last.body["target_lang"] == "EN-GB"
        await h.translator.translate(["Hello"], "en", "pt-br")
        assert h.fake.last.body["target_lang"] == "PT-BR"
    finally:
        await h.fake.close()


@pytest.mark.parametrize(("status", "error"), [(456, PermanentError), (429, TransientError)])
async def test_deepl_quota_and_rate_limit(
    status: int, error: type[Exception], session: aiohttp.ClientSession
) -> None:
    h = await start_harness("deepl", session)
    h.fake.fail_next(status)
    try:
        with pytest.raises(error, match=str(status)):
            await h.translator.translate(["Hello"], "en", "es")
    finally:
        await h.fake.close()


def test_deepl_default_endpoint_follows_the_key() -> None:
    assert DeepLTranslator(settings_for("deepl", key="abc:fx")).base == "https://api-free.deepl.com"
    assert DeepLTranslator(settings_for("deepl", key="abc")).base == "https://api.deepl.com"
    assert DeepLTranslator(settings_for("deepl", "http://x:1/", key="a:fx")).base == "http://x:1"


async def test_libretranslate_request(session: aiohttp.ClientSession) -> None:
    h = await start_harness("libretranslate", session)
    try:
        await h.translator.translate(["Hello {name}"], "", "es")
        assert h.fake.last.body == {
            "q": [protect("Hello {name}")],
            "source": "auto",
            "target": "es",
            "format": "html",
            "api_key": KEY,
        }
    finally:
        await h.fake.close()
    fake = FakeLibreTranslate("")
    translator = LibreTranslateTranslator(settings_for("libretranslate", await fake.start(), ""))
    try:
        assert await translator.translate(["Hello"], "en", "es") == ["Hola"]
        assert "api_key" not in fake.last.body
    finally:
        await translator.close()
        await fake.close()


def test_libretranslate_needs_a_url() -> None:
    with pytest.raises(SettingsError, match="HABLA_TRANSLATOR_URL"):
        LibreTranslateTranslator(settings_for("libretranslate", ""))


async def test_http_timeout_and_refused_connection_are_transient() -> None:
    fake = FakeAzureTranslator(KEY)
    settings = settings_for("azure", await fake.start()).with_overrides(send={"timeout_s": 0.2})
    translator = AzureTranslator(settings)  # no session injected: it opens its own
    fake.delay = 0.5
    try:
        with pytest.raises(TransientError):
            await translator.translate(["Hello"], "en", "es")
        await asyncio.sleep(0.5)  # let the fake's stalled handler finish
    finally:
        await translator.close()
        await fake.close()
    refused = AzureTranslator(settings_for("azure", f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(TransientError):
            await refused.translate(["Hello"], "en", "es")
    finally:
        await refused.close()


async def test_malformed_answer_is_permanent(session: aiohttp.ClientSession) -> None:
    fake = FakeAzureTranslator(KEY)
    translator = AzureTranslator(settings_for("azure", await fake.start()), session)
    fake.answer = lambda request, body: web.json_response({"unexpected": True})  # type: ignore[method-assign]
    try:
        with pytest.raises(PermanentError, match="unexpected response"):
            await translator.translate(["Hello"], "en", "es")
    finally:
        await fake.close()


async def test_batches_follow_the_provider_limit(session: aiohttp.ClientSession) -> None:
    h = await start_harness("deepl", session)
    try:
        texts = [f"Hello {i} thanks" for i in range(120)]
        out = await h.translator.translate(texts, "en", "es")
        assert out == [f"Hola {i} gracias" for i in range(120)]
        assert [len(t) for t in h.sent_texts] == [50, 50, 20]
    finally:
        await h.fake.close()


def test_registry_and_factory() -> None:
    assert build_translator(Settings()) is None
    assert {name: TRANSLATORS.load(name) for name in TRANSLATORS} == {
        "google": GoogleTranslator,
        "azure": AzureTranslator,
        "deepl": DeepLTranslator,
        "libretranslate": LibreTranslateTranslator,
    }
    for name in TRANSLATORS:
        cls: Any = TRANSLATORS.load(name)
        translator = build_translator(
            settings_for(
                name, "127.0.0.1:1" if name == "google" else "http://x", google_project="p"
            )
        )
        assert translator is not None and type(translator) is cls
        assert translator.name == name


# ---------------------------------------------------------------- caching


@pytest.fixture
async def azure(session: aiohttp.ClientSession) -> AsyncIterator[Harness]:
    h = await start_harness("azure", session)
    yield h
    await h.fake.close()


def sent(fake: FakeHttpTranslator) -> list[list[str]]:
    return [[item["Text"] for item in r.body] for r in fake.requests]


async def test_cache_second_call_makes_no_request(azure: Harness, tmp_path: Path) -> None:
    db = SQLite(tmp_path / "habla.db")
    cached = CachingTranslator(azure.translator, SQLiteTranslationCache(db))
    assert await cached.translate(TEXTS, "en", "es") == EXPECTED_ES
    assert len(azure.fake.requests) == 1
    assert await cached.translate(TEXTS, "en", "es") == EXPECTED_ES
    assert len(azure.fake.requests) == 1
    # a partly known list sends only the new text
    assert await cached.translate([TEXTS[0], "Thanks"], "en", "es") == [EXPECTED_ES[0], "Gracias"]
    assert sent(azure.fake)[-1] == [protect("Thanks")]
    await db.close()


async def test_cache_identical_texts_once_and_same_language(azure: Harness, tmp_path: Path) -> None:
    db = SQLite(tmp_path / "habla.db")
    cached = CachingTranslator(azure.translator, SQLiteTranslationCache(db))
    out = await cached.translate(["Hello", "The order", "Hello", "Hello"], "en", "es")
    assert out == ["Hola", "El pedido", "Hola", "Hola"]
    assert sent(azure.fake) == [[protect("Hello"), protect("The order")]]
    assert await cached.translate(["Hello", "Bye"], "es", "es") == ["Hello", "Bye"]
    assert await cached.translate(["Hello", "Bye"], "EN", "en") == ["Hello", "Bye"]
    assert len(azure.fake.requests) == 1
    await db.close()


async def test_cache_propagates_errors_and_stores_nothing(azure: Harness, tmp_path: Path) -> None:
    db = SQLite(tmp_path / "habla.db")
    cached = CachingTranslator(azure.translator, SQLiteTranslationCache(db))
    azure.fake.fail_next(503)
    with pytest.raises(TransientError):
        await cached.translate(["Hello"], "en", "es")
    azure.fake.fail_next(400)
    with pytest.raises(PermanentError):
        await cached.translate(["Hello"], "en", "es")
    assert await db.fetchone("SELECT COUNT(*) FROM translations") == (0,)
    assert await cached.translate(["Hello"], "en", "es") == ["Hola"]
    assert len(azure.fake.requests) == 3
    await db.close()


async def test_sqlite_cache_persists(azure: Harness, tmp_path: Path) -> None:
    path = tmp_path / "habla.db"
    db = SQLite(path)
    await CachingTranslator(azure.translator, SQLiteTranslationCache(db)).translate(
        ["Hello", "The price"], "", "es"
    )
    await db.close()
    db = SQLite(path)
    cache = SQLiteTranslationCache(db)
    assert await cache.get_many("azure", "", "es", ["Hello", "The price", "other"]) == {
        "Hello": "Hola",
        "The price": "El precio",
    }
    row = await db.fetchone(
        "SELECT provider, source, target, text_hash, translated FROM translations WHERE text = ?",
        ("Hello",),
    )
    assert row == ("azure", "auto", "es", hashlib.sha256(b"Hello").hexdigest(), "Hola")
    again = CachingTranslator(azure.translator, cache)
    assert await again.translate(["The price", "Hello"], "", "es") == ["El precio", "Hola"]
    assert len(azure.fake.requests) == 1
    assert await cache.get_many("azure", "", "pt", ["Hello"]) == {}
    await db.close()


async def test_redis_cache(azure: Harness, redis_url: str) -> None:
    client = aioredis.from_url(redis_url.rsplit("/", 1)[0] + "/5")
    try:
        cache = RedisTranslationCache(client, ttl_s=3600)
        cached = CachingTranslator(azure.translator, cache)
        texts = ["Hello {name}", "The order AB12345", "Hello {name}"]
        expected = ["Hola {name}", "El pedido AB12345", "Hola {name}"]
        assert await cached.translate(texts, "en", "es") == expected
        assert sent(azure.fake) == [[protect("Hello {name}"), protect("The order AB12345")]]
        key = "habla:tr:azure:en:es:" + hashlib.sha256(b"Hello {name}").hexdigest()
        assert await client.get(key) == b"Hola {name}"
        assert 0 < await client.ttl(key) <= 3600
        assert await cached.translate(texts, "en", "es") == expected
        assert len(azure.fake.requests) == 1
        fresh = CachingTranslator(azure.translator, RedisTranslationCache(client))
        assert await fresh.translate(["The order AB12345"], "en", "es") == ["El pedido AB12345"]
        assert len(azure.fake.requests) == 1
        assert await cache.get_many("azure", "en", "pt", ["Hello {name}"]) == {}
    finally:
        await client.flushdb()
        await client.close()


async def test_cache_failure_degrades_to_translation(azure: Harness) -> None:
    client = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/5")
    cached = CachingTranslator(azure.translator, RedisTranslationCache(client))
    try:
        assert await cached.translate(["Hello"], "en", "es") == ["Hola"]
    finally:
        await client.close()
