"""The REST channel's debug section and voice upload (what the inspector reads), over
HTTP without a browser: who gets the turn's record, and the bounds of the form."""

from __future__ import annotations

import aiohttp

from tests.conftest import ServerFactory

AUTH = {"Authorization": "Bearer rest-token"}
URL = "/webhooks/rest/webhook"


async def test_the_turn_record_needs_the_token(make_server: ServerFactory) -> None:
    client, _ = await make_server()
    ask = {"sender": "insp1", "message": "where is my order AB12345", "debug": True}
    resp = await client.post(URL, json=ask, headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body["messages"][0]["text"].startswith("Order AB12345 has shipped")
    debug = body["debug"]
    assert debug["intent"]["name"] == "order_status"
    assert debug["entities"][0]["entity"] == "order_number"
    assert debug["entities"][0]["value"] == "AB12345"
    assert {"name": "order_number", "before": None, "after": "AB12345"} in debug["slots"]
    assert [a["name"] for a in debug["actions"]] == ["order_status_form", "action_order_status"]
    assert debug["language"]["code"] == "en" and debug["language"]["outcome"] == "set"
    [preview] = debug["replies"]
    assert preview["whatsapp"][0]["type"] == "text" and preview["call"].startswith("Order")
    # without the token (or a wrong one), no record: the request is refused
    assert (await client.post(URL, json=ask)).status == 403
    wrong = {"Authorization": "Bearer rest-tokeN"}
    assert (await client.post(URL, json=ask, headers=wrong)).status == 403
    # without debug the answer stays Rasa's list
    plain = await client.post(URL, json={"sender": "insp1", "message": "hi"}, headers=AUTH)
    assert isinstance(await plain.json(), list)


async def test_a_local_dev_server_without_a_token_gives_no_record(
    make_server: ServerFactory,
) -> None:
    client, _ = await make_server(env={"HABLA_REST_TOKEN": "", "HABLA_PUBLIC_URL": ""})
    ask = {"sender": "x", "message": "hi"}
    assert (await client.post(URL, json=ask)).status == 200  # the chat works
    assert (await client.post(URL, json=ask | {"debug": True})).status == 403
    resp = await client.post(URL + "?token=anything", json=ask | {"debug": True})
    assert resp.status == 403


async def test_the_language_endpoint(make_server: ServerFactory) -> None:
    client, runtime = await make_server()
    path = "/webhooks/rest/language"
    assert (await client.get(path + "?sender=l1")).status == 403
    assert (await client.post(path, json={"sender": "l1", "language": "es"})).status == 403
    resp = await client.get(path + "?sender=l1", headers=AUTH)
    assert await resp.json() == {"language": None, "languages": ["en", "es", "pt"]}
    bad = await client.post(path, json={"sender": "l1", "language": "xx"}, headers=AUTH)
    assert bad.status == 400
    resp = await client.post(path, json={"sender": "l1", "language": "pt"}, headers=AUTH)
    assert resp.status == 200 and await runtime.language("l1") == "pt"
    assert await runtime.stores.languages.get("l1") == ("pt", True)  # type: ignore[union-attr]


async def test_the_voice_form_is_bounded(make_server: ServerFactory) -> None:
    client, _ = await make_server(env={"HABLA_VOICE_MAX_BYTES": "2048"})

    def form(audio: bytes | None, message: str = "") -> aiohttp.MultipartWriter:
        """multipart/form-data as a browser's FormData sends it."""
        writer = aiohttp.MultipartWriter("form-data")
        for name, value in (("sender", "v1"), ("message", message)):
            writer.append(value).set_content_disposition("form-data", name=name)
        if audio is not None:
            part = writer.append(audio, {"Content-Type": "audio/webm"})
            part.set_content_disposition("form-data", name="audio", filename="a.webm")
        return writer

    assert (await client.post(URL, data=form(None), headers=AUTH)).status == 400
    assert (await client.post(URL, data=form(b"\0" * 4096), headers=AUTH)).status == 413
    # a form with text is a text message; the STT is off here: a voice note is refused
    # in words (voice_rejected), answered like any turn
    resp = await client.post(URL, data=form(None, "hi"), headers=AUTH)
    assert (await resp.json())[0]["text"].startswith("Hi!")
    resp = await client.post(URL, data=form(b"\x1aE\xdf\xa3" + b"\0" * 100), headers=AUTH)
    assert resp.status == 200 and (await resp.json())[0]["text"]
