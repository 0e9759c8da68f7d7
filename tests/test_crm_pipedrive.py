"""Pipedrive's own behaviour, beside the contract tests every CRM runs in tests/test_crm.py:
the adapter (aiohttp, no SDK) against a local fake speaking Pipedrive's wire protocol,
and the example bot writing to it through a WhatsApp conversation."""

from __future__ import annotations

from pathlib import Path

import pytest

from commerce.crm import pipedrive as pipedrive_module
from commerce.crm.base import CRM, Contact, Deal
from commerce.crm.pipedrive import PipedriveCRM
from runtime.providers import CRMS
from runtime.retry import PermanentError, TransientError
from runtime.settings import SettingsError
from tests.conftest import ServerFactory
from tests.fakes.graph_api import FakeGraphAPI
from tests.fakes.hubspot_api import FakeHubSpotAPI
from tests.fakes.pipedrive_api import REF_FIELD, FakePipedriveAPI
from tests.fakes.stripe_api import FakeStripeAPI
from tests.test_crm import ANA, PIPEDRIVE_TOKEN, pipedrive, settings_for
from tests.test_shop import USER, Shop, eventually, shop_env

ORDER_REF = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"  # another deal field's API key
LANGUAGE = "0c9f2b6e4d8a1357924680bdfe13579ace024681"  # a person custom field's API key


async def test_pipedrive_rate_limit_carries_the_wait() -> None:
    async with pipedrive() as p:
        p.fake.fail_next(1, status=429, reset=7)  # x-ratelimit-reset only
        with pytest.raises(TransientError, match="429") as raised:
            await p.crm.upsert_deal(Deal("o-2", "Order", 1.0, "EUR", "open"))
        assert raised.value.retry_after == 7.0

        p.fake.fail_next(1, status=429, retry_after=3, reset=7)  # Retry-After wins
        with pytest.raises(TransientError) as raised:
            await p.crm.upsert_contact(ANA)
        assert raised.value.retry_after == 3.0

        p.fake.fail_next(1, status=404)
        with pytest.raises(PermanentError, match="404"):
            await p.crm.upsert_contact(ANA)


async def test_pipedrive_field_map_ref_field_and_stages_are_honoured() -> None:
    async with pipedrive(deal_fields=[REF_FIELD, ORDER_REF], person_fields=[LANGUAGE]) as p:
        crm = p.new(
            contact_fields={"language": LANGUAGE},
            ref_field=ORDER_REF,
            stage_map={"open": "3", "won": "5"},
        )
        contact_id = await crm.upsert_contact(ANA)
        deal_id = await crm.upsert_deal(Deal("o-1", "Order", 19.999, "usd", "open", contact_id))

        searches = [r.query for r in p.fake.requests if r.path == "/api/v2/persons/search"]
        assert searches == [
            {"term": "+34600111222", "fields": "phone", "exact_match": "true", "limit": "10"},
            {"term": "ana@example.com", "fields": "email", "exact_match": "true", "limit": "10"},
        ]
        assert p.fake.sent("POST", "/api/v2/persons") == [
            {
                "name": "Ana García",
                "phones": [{"value": "+34600111222", "primary": True, "label": "mobile"}],
                "emails": [{"value": "ana@example.com", "primary": True, "label": "work"}],
                "custom_fields": {LANGUAGE: "es"},
            }
        ]
        assert p.fake.sent("POST", "/api/v2/deals") == [
            {
                "title": "Order",
                "value": 20.0,  # two decimals for USD
                "currency": "USD",
                "status": "open",
                "stage_id": 3,
                "person_id": int(contact_id),
                "custom_fields": {ORDER_REF: "o-1"},
            }
        ]
        assert await crm.move_deal("o-1", "won") == deal_id
        deal = p.one("deal")
        assert (deal["status"], deal["stage_id"], deal[ORDER_REF]) == ("won", 5, "o-1")
        assert deal[REF_FIELD] is None

        await crm.move_deal("o-1", "lost")  # no stage mapped for "lost": the stage stays
        assert p.fake.sent("PATCH", f"/api/v2/deals/{deal_id}")[-1] == {"status": "lost"}
        assert (p.one("deal")["status"], p.one("deal")["stage_id"]) == ("lost", 5)
        deal_search = [r.query for r in p.fake.requests if r.path == "/api/v2/deals/search"][0]
        assert deal_search == {
            "term": "o-1",
            "fields": "custom_fields",
            "exact_match": "true",
            "limit": "10",
        }


async def test_pipedrive_person_found_by_email_keeps_its_phone() -> None:
    async with pipedrive() as p:
        first = await p.crm.upsert_contact(Contact(phone="+34600000001", email="one@example.com"))
        again = await p.crm.upsert_contact(
            Contact(phone="+34 600 000 002", email="ONE@example.com")
        )
        same = await p.crm.upsert_contact(Contact(phone="+34600000002"))

        assert first == again == same
        person = p.fake.objects("persons")[0]
        assert [e["value"] for e in person["phones"]] == ["+34600000001", "+34 600 000 002"]
        assert [e["primary"] for e in person["phones"]] == [True, False]
        assert [e["value"] for e in person["emails"]] == ["one@example.com"]
        assert person["name"] == "+34600000001"  # no names given: the phone stands in
        # the last upsert found everything in place: read, nothing written
        assert p.fake.requests[-1].method == "GET"


async def test_pipedrive_token_goes_in_the_header_only() -> None:
    async with pipedrive() as p:
        contact_id = await p.crm.upsert_contact(ANA)
        await p.crm.create_lead(ANA, "", "lead-1")
        await p.crm.add_note(contact_id, "hola", "conv-1")
        assert {r.token for r in p.fake.requests} == {PIPEDRIVE_TOKEN}
        assert not any("api_token" in r.query for r in p.fake.requests)
        assert p.one("lead")["title"] == "Ana García"

        crm = p.new(api_token="wrong-" + PIPEDRIVE_TOKEN)
        with pytest.raises(PermanentError) as raised:
            await crm.upsert_contact(ANA)
        assert str(raised.value) == "pipedrive 401: unauthorized access"


async def test_pipedrive_note_is_found_among_many_and_needs_its_deal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipedrive_module, "NOTES_PAGE", 2)  # the marker is on page 3
    async with pipedrive() as p:
        contact_id = await p.crm.upsert_contact(ANA)
        for i in range(5):
            await p.crm.add_note(contact_id, f"note {i}", f"conv-{i}")
        assert await p.crm.add_note(contact_id, "note 4, longer", "conv-4") == str(
            p.fake.objects("notes")[4]["id"]
        )
        assert len(p.fake.objects("notes")) == 5
        assert p.fake.objects("notes")[4]["content"].startswith("note 4, longer<br><br>")

        with pytest.raises(TransientError, match="order-404"):
            await p.crm.add_note(contact_id, "hola", "conv-9", deal_ref="order-404")


async def test_pipedrive_company_domain_url_and_unknown_stage_field() -> None:
    async with pipedrive() as p:
        crm = p.new(base_url=p.fake.url + "/api/v1/")  # a pasted API URL still works
        assert crm.base_url == p.fake.url  # type: ignore[attr-defined]
        await crm.upsert_contact(ANA)
        with pytest.raises(PermanentError, match="Stage 99 not found"):
            await p.new(stage_map={"open": "99"}).upsert_deal(
                Deal("o-9", "Order", 1.0, "EUR", "open")
            )


async def test_pipedrive_from_settings(tmp_path: Path) -> None:
    async with pipedrive(person_fields=[LANGUAGE]) as p:
        settings = settings_for(
            tmp_path,
            HABLA_CRM="pipedrive",
            PIPEDRIVE_API_TOKEN=PIPEDRIVE_TOKEN,
            HABLA_PIPEDRIVE_BASE_URL=p.fake.url,
            HABLA_PIPEDRIVE_REF_FIELD=REF_FIELD,
            HABLA_SEND_TIMEOUT_S="3.5",
            HABLA_CRM_FIELD_MAP=f"contact.language={LANGUAGE},stage.open=2",
        )
        crm = CRMS.load(settings.commerce.crm, CRM).from_settings(settings)
        try:
            assert isinstance(crm, PipedriveCRM)
            assert crm.timeout_s == 3.5  # send.timeout_s
            contact_id = await crm.upsert_contact(ANA)
            await crm.upsert_deal(Deal("o-1", "Order", 1.0, "EUR", "open", contact_id))
        finally:
            await crm.close()

        assert p.one("contact")[LANGUAGE] == "es"
        deal = p.one("deal")
        assert (deal[REF_FIELD], deal["stage_id"], str(deal["person_id"])) == ("o-1", 2, contact_id)


def test_pipedrive_settings_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        settings_for(tmp_path, HABLA_CRM="pipedrive", HABLA_PIPEDRIVE_BASE_URL="api.pipedrive")
    text = str(raised.value)
    assert "PIPEDRIVE_API_TOKEN is required when commerce.crm is pipedrive" in text
    assert "HABLA_PIPEDRIVE_REF_FIELD" in text
    assert "HABLA_PIPEDRIVE_BASE_URL" in text
    # ref= in the field map stands in for HABLA_PIPEDRIVE_REF_FIELD
    settings = settings_for(
        tmp_path,
        HABLA_CRM="pipedrive",
        PIPEDRIVE_API_TOKEN=PIPEDRIVE_TOKEN,
        HABLA_CRM_FIELD_MAP=f"ref={REF_FIELD}",
    )
    crm = CRMS.load(settings.commerce.crm, CRM).from_settings(settings)
    assert crm.ref_field == REF_FIELD  # type: ignore[attr-defined]
    assert crm.base_url == "https://api.pipedrive.com"  # type: ignore[attr-defined]


def test_pipedrive_names_every_config_problem() -> None:
    with pytest.raises(
        ValueError, match="api_token is required.*ref_field 'habla_ref'.*stage_map.*contact_fields"
    ):
        PipedriveCRM(
            "",
            ref_field="habla_ref",
            stage_map={"open": "Qualified"},
            contact_fields={"mobile": "phone"},
        )


# ---------------------------------------------------------------- through a conversation


async def test_the_shop_writes_the_contact_and_won_deal_to_pipedrive(
    make_server: ServerFactory, graph_api: FakeGraphAPI, stripe_api: FakeStripeAPI
) -> None:
    fake = FakePipedriveAPI(PIPEDRIVE_TOKEN)
    await fake.start()
    try:
        env = shop_env(
            graph_api.url,
            stripe_api.url,
            HABLA_CRM="pipedrive",
            PIPEDRIVE_API_TOKEN=PIPEDRIVE_TOKEN,
            HABLA_PIPEDRIVE_BASE_URL=fake.url,
            HABLA_PIPEDRIVE_REF_FIELD=REF_FIELD,
        )
        client, runtime = await make_server(env=env)
        shop = Shop(client, runtime, graph_api, stripe_api, FakeHubSpotAPI("unused"))
        order_id, _ = await shop.buy_hoodie()
        await shop.webhook_and_wait(shop.stripe.complete(next(iter(shop.stripe.sessions))))

        async def won() -> bool:
            deals = fake.objects("deals")
            return len(deals) == 1 and deals[0]["status"] == "won"

        await eventually(won)
        [person] = fake.flat("persons")
        assert (person["phone"], person["first_name"]) == ("+" + USER, "Lucía")
        [deal] = fake.flat("deals")
        assert (deal[REF_FIELD], deal["value"], deal["currency"]) == (order_id, 39.9, "EUR")
        assert deal["person_id"] == person["id"]
        assert {r.token for r in fake.requests} == {PIPEDRIVE_TOKEN}
        jobs = (await shop.admin("/api/outbox"))["jobs"]
        assert jobs and {j["status"] for j in jobs} == {"done"}  # nothing refused
        assert {j["attempts"] for j in jobs} == {1}
        crm_jobs = [j for j in jobs if j["kind"].startswith("crm.")]
        assert crm_jobs and {j["result"]["provider"] for j in crm_jobs} == {"pipedrive"}
    finally:
        await fake.close()
