"""Generated media: unguessable names, signed expiring URLs, files deleted after expiry."""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from runtime.media import MediaHost


async def serve(host: MediaHost) -> TestClient:
    app = web.Application()
    app.add_routes(host.routes())
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_signed_urls_serve_until_they_expire(tmp_path: Path) -> None:
    host = MediaHost(tmp_path, "secret-key", ttl_s=600, public_base="https://bot.example.com")
    url = await host.put(b"OggS voice", "audio/ogg")
    parsed = urlparse(url)
    assert url.startswith("https://bot.example.com/media/") and parsed.path.endswith(".ogg")
    name = parsed.path.rsplit("/", 1)[1]
    assert len(name) >= 32  # 192 random bits
    q = parse_qs(parsed.query)
    client = await serve(host)
    try:
        ok = await client.get(f"{parsed.path}?{parsed.query}")
        assert ok.status == 200 and await ok.read() == b"OggS voice"
        assert ok.headers["Content-Type"] == "audio/ogg"
        later = int(q["e"][0]) + 60  # the expiry cannot be extended without the key
        extended = await client.get(f"{parsed.path}?e={later}&s={q['s'][0]}")
        forged = await client.get(f"{parsed.path}?e={q['e'][0]}&s=AAAA")
        unsigned = await client.get(parsed.path)
        assert extended.status == forged.status == unsigned.status == 404
        expired_url = host.url(name, int(time.time()) - 1)  # correctly signed, but past
        expired = await client.get(urlparse(expired_url).path + "?" + urlparse(expired_url).query)
        assert expired.status == 404
    finally:
        await client.close()


async def test_another_key_cannot_sign(tmp_path: Path) -> None:
    ours = MediaHost(tmp_path, "ours", ttl_s=600, public_base="https://bot.example.com")
    theirs = MediaHost(tmp_path, "theirs", ttl_s=600, public_base="https://bot.example.com")
    url = urlparse(await theirs.put(b"x", "audio/ogg"))
    client = await serve(ours)
    try:
        assert (await client.get(f"{url.path}?{url.query}")).status == 404
    finally:
        await client.close()


def test_sweep_deletes_expired_files(tmp_path: Path) -> None:
    host = MediaHost(tmp_path, "", ttl_s=60, public_base="")
    (tmp_path / "old.ogg").write_bytes(b"old")
    (tmp_path / "new.ogg").write_bytes(b"new")
    past = time.time() - 3600
    os.utime(tmp_path / "old.ogg", (past, past))
    assert host.sweep() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["new.ogg"]
