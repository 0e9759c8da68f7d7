"""Rasa's REST channel (same JSON in and out) and the browser chat page."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ServerFactory

AUTH = {"Authorization": "Bearer rest-token"}


async def test_rest_channel_speaks_rasa_json(make_server: ServerFactory) -> None:
    client, _ = await make_server()
    resp = await client.post(
        "/webhooks/rest/webhook", json={"sender": "dev1", "message": "hi"}, headers=AUTH
    )
    assert resp.status == 200
    body = await resp.json()
    assert body[0]["recipient_id"] == "dev1"
    assert body[0]["text"].startswith("Hi!")
    assert body[0]["buttons"][0] == {"title": "Opening hours", "payload": "/opening_hours"}
    # a button payload goes straight to its intent, as in Rasa
    resp = await client.post(
        "/webhooks/rest/webhook", json={"sender": "dev1", "message": "/shipping"}, headers=AUTH
    )
    assert "ship across the EU" in (await resp.json())[0]["text"]


async def test_rest_form_keeps_state_per_sender(make_server: ServerFactory) -> None:
    client, _ = await make_server()

    async def say(sender: str, text: str) -> str:
        resp = await client.post(
            "/webhooks/rest/webhook", json={"sender": sender, "message": text}, headers=AUTH
        )
        return " ".join(m.get("text", "") for m in await resp.json())

    assert "order number" in (await say("a", "where is my order")).lower()
    assert "Monday" in await say("b", "opening hours?")  # another user, unaffected
    assert "shipped" in (await say("a", "AB12345")).lower()


async def test_rest_rejects_bad_requests(make_server: ServerFactory) -> None:
    client, _ = await make_server()
    url = "/webhooks/rest/webhook"
    assert (await client.post(url, json={"sender": "x", "message": "hi"})).status == 403
    bad_token = {"Authorization": "Bearer nope"}
    assert (await client.post(url, json={"message": "hi"}, headers=bad_token)).status == 403
    assert (await client.post(url, data="not json", headers=AUTH)).status == 400
    assert (await client.post(url, json=["a"], headers=AUTH)).status == 400
    assert (await client.post(url, json={"sender": "x", "message": 5}, headers=AUTH)).status == 400
    big = {"sender": "x", "message": "a" * 5000}
    assert (await client.post(url, json=big, headers=AUTH)).status == 413


async def test_rest_is_open_only_for_a_local_dev_server(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    # loopback, no public URL, no token: the author's own machine
    client, runtime = await make_server(
        env={"HABLA_REST_TOKEN": "", "HABLA_PUBLIC_URL": ""}, data_dir=tmp_path / "a"
    )
    assert "rest" not in runtime.closed_channels
    resp = await client.post("/webhooks/rest/webhook", json={"sender": "x", "message": "hi"})
    assert resp.status == 200
    page = await client.get("/")
    assert page.status == 200 and "/webhooks/rest/webhook" in await page.text()
    # exposed (public URL set) without a token: closed
    client, runtime = await make_server(env={"HABLA_REST_TOKEN": ""}, data_dir=tmp_path / "b")
    assert runtime.closed_channels["rest"] == ["HABLA_REST_TOKEN"]
    resp = await client.post("/webhooks/rest/webhook", json={"sender": "x", "message": "hi"})
    assert resp.status == 403
    # a load balancer's health check does not depend on any channel being open
    health = await client.get("/health")
    assert health.status == 200 and (await health.json())["status"] == "ok"
