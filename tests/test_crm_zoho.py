"""Zoho CRM beyond the contract tests of tests/test_crm.py: OAuth (the access token
cached, renewed before it expires and on a 401, single-flight, a revoked refresh
token failing for good), Zoho's per-record error codes, the data centres, and the
adapter built from the settings. Against tests/fakes/zoho_api.py."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from commerce.crm import zoho as zoho_module
from commerce.crm.base import CRM, Contact, Deal
from commerce.crm.zoho import ZohoCRM, api_error
from commerce.outbox import Outbox
from runtime.errors import PermanentError, TransientError
from runtime.providers import CRMS
from runtime.settings import SettingsError
from runtime.sqlite import SQLite
from tests.test_crm import ANA, ZOHO_CLIENT, ZOHO_REFRESH, settings_for, zoho

# ---------------------------------------------------------------- OAuth


async def test_access_token_is_fetched_once_and_sent_as_zoho_oauthtoken() -> None:
    async with zoho() as p:
        await p.crm.upsert_contact(ANA)
        await p.crm.upsert_deal(Deal("o-1", "Order 1", 9.5, "EUR", "open"))

        [grant] = p.fake.grants  # one token for every call
        assert grant == {
            "grant_type": "refresh_token",
            "client_id": ZOHO_CLIENT[0],
            "client_secret": ZOHO_CLIENT[1],
            "refresh_token": ZOHO_REFRESH,
        }
        [token] = p.fake.issued
        assert {r.authorization for r in p.fake.requests} == {f"Zoho-oauthtoken {token}"}
        assert all(ZOHO_REFRESH not in str(r.query) for r in p.fake.requests)


async def test_token_is_renewed_before_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    async with zoho() as p:
        await p.crm.upsert_contact(ANA)
        first = {r.authorization for r in p.fake.requests}
        sent = len(p.fake.requests)
        later = zoho_module._clock() + 3600 - 59  # within a minute of expires_in (3600)
        monkeypatch.setattr(zoho_module, "_clock", lambda: later)

        await p.crm.upsert_contact(ANA)

        assert len(p.fake.grants) == 2
        second = {r.authorization for r in p.fake.requests[sent:]}
        assert len(first) == len(second) == 1 and first != second
        # renewed before Zoho would refuse it: every request was answered on the first try
        assert len(p.fake.requests) == 2 * sent


async def test_token_refused_with_401_is_renewed_and_the_request_sent_again() -> None:
    async with zoho() as p:
        await p.crm.upsert_contact(ANA)
        p.fake.expire_tokens()  # revoked or expired early, as Zoho may do
        sent = len(p.fake.requests)

        contact_id = await p.crm.upsert_contact(replace(ANA, first_name="Anita"))

        assert len(p.fake.grants) == 2
        refused, retried = p.fake.requests[sent], p.fake.requests[sent + 1]
        assert (refused.path, refused.query) == (retried.path, retried.query)
        assert refused.authorization != retried.authorization
        assert p.one("contact")["id"] == contact_id
        assert p.one("contact")["First_Name"] == "Anita"


async def test_a_second_401_is_permanent_and_not_retried_again() -> None:
    async with zoho() as p:
        p.fake.fail_next(2, status=401)
        with pytest.raises(PermanentError, match="401 INVALID_TOKEN") as raised:
            await p.crm.upsert_contact(ANA)
        assert not raised.value.transient
        assert len(p.fake.requests) == 2 and len(p.fake.grants) == 2


async def test_concurrent_calls_share_one_token_refresh() -> None:
    async with zoho() as p:
        contacts = [Contact(phone=f"+3460000000{i}", last_name=f"L{i}") for i in range(5)]
        ids = await asyncio.gather(*(p.crm.upsert_contact(c) for c in contacts))

        assert len(set(ids)) == 5
        assert len(p.fake.grants) == 1


async def test_revoked_refresh_token_fails_for_good_and_the_operator_sees_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    db = SQLite(tmp_path / "habla.sqlite3")
    outbox = Outbox(db, max_attempts=5, backoff_s=0.01)
    await outbox.setup()
    try:
        async with zoho() as p:
            await p.crm.upsert_contact(ANA)  # a token is cached, then revoked
            p.fake.revoke()

            async def contact(payload: dict[str, Any]) -> dict[str, Any]:
                return {"contact_id": await p.crm.upsert_contact(Contact(**payload))}

            outbox.register("crm.contact", contact)
            job = await outbox.submit("crm.contact", {"phone": "+34600999888"}, "crm.contact:1")

            assert job.status == "failed" and job.attempts == 1  # not retried
            assert "invalid_code" in job.last_error and "ZOHO_REFRESH_TOKEN" in job.last_error
            [failed] = await outbox.jobs("failed")
            assert failed.key == "crm.contact:1"
            assert p.fake.grants[-1]["grant_type"] == "refresh_token"
    finally:
        await db.close()
    for secret in (ZOHO_REFRESH, ZOHO_CLIENT[1]):
        assert secret not in job.last_error
        assert secret not in caplog.text


async def test_wrong_client_is_permanent() -> None:
    async with zoho() as p:
        crm = p.new(client_secret="not-the-secret")
        with pytest.raises(PermanentError, match="invalid_client"):
            await crm.upsert_contact(ANA)
        assert p.fake.requests == []  # no API call without a token


async def test_accounts_server_down_or_throttling_is_transient() -> None:
    async with zoho() as p:
        p.fake.fail_token_next(1, status=503)
        with pytest.raises(TransientError, match="503"):
            await p.crm.upsert_contact(ANA)
        p.fake.fail_token_next(
            1,
            status=400,
            error="Access Denied",
            description="You have made too many requests continuously. Please try again "
            "after some time.",
        )
        with pytest.raises(TransientError, match="too many requests"):
            await p.crm.upsert_contact(ANA)

        await p.crm.upsert_contact(ANA)
        assert len(p.records("contact")) == 1


# ---------------------------------------------------------------- Zoho's answers


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [
        (400, "LIMIT_EXCEEDED", True),
        (429, "TOO_MANY_REQUESTS", True),
        (400, "MANDATORY_NOT_FOUND", False),
        (400, "INVALID_DATA", False),
        (403, "NO_PERMISSION", False),
        (500, "INTERNAL_ERROR", True),
    ],
)
async def test_record_error_codes_map_to_transient_or_permanent(
    status: int, code: str, transient: bool
) -> None:
    async with zoho() as p:
        await p.crm.create_lead(ANA, "whatsapp", "lead-1")  # one request: the upsert
        p.fake.fail_next(1, status=status, code=code, in_data=True)
        with pytest.raises((TransientError, PermanentError), match=f"{status} {code}") as raised:
            await p.crm.create_lead(ANA, "whatsapp", "lead-1")
        assert raised.value.transient is transient
        assert p.fake.sent("POST", "/crm/v6/Leads/upsert")[-1]["data"][0]["Habla_Ref"] == "lead-1"


def test_error_mapping_reads_the_record_then_the_answer() -> None:
    record = {
        "data": [
            {
                "code": "MANDATORY_NOT_FOUND",
                "details": {"api_name": "Last_Name", "json_path": "$.data[0].Last_Name"},
                "message": "required field not found",
                "status": "error",
            }
        ]
    }
    error = api_error(400, record)
    assert isinstance(error, PermanentError)
    assert str(error) == "zoho 400 MANDATORY_NOT_FOUND: required field not found (Last_Name)"
    limit = api_error(400, {"code": "LIMIT_EXCEEDED", "message": "API credits exceeded"})
    assert limit.transient
    assert api_error(429, {"code": "TOO_MANY_REQUESTS"}, "7").retry_after == 7.0
    assert api_error(502, "<html>bad gateway</html>").transient


async def test_invalid_value_is_permanent_and_names_the_field() -> None:
    async with zoho() as p:
        with pytest.raises(PermanentError, match="INVALID_DATA.*Email"):
            await p.crm.upsert_contact(Contact(email="not-an-email", last_name="X"))


async def test_duplicate_data_on_create_updates_the_record_zoho_names() -> None:
    unique = {"Contacts": ["Email"], "Leads": ["Habla_Ref"], "Deals": ["Habla_Ref"]}
    async with zoho(unique_fields=unique) as p:
        p.fake.search_lag = True  # search does not show the new contact yet
        first = await p.crm.upsert_contact(ANA)
        second = await p.crm.upsert_contact(replace(ANA, first_name="Anita"))

        assert first == second
        assert p.one("contact")["First_Name"] == "Anita"
        assert p.fake.sent("PUT", f"/crm/v6/Contacts/{first}")  # the update after the refusal


async def test_deal_upsert_sends_duplicate_check_and_closing_date_once() -> None:
    async with zoho(currencies=("EUR", "JPY")) as p:
        contact_id = await p.crm.upsert_contact(ANA)
        await p.crm.upsert_deal(Deal("o-9", "Order 9", 10.0, "JPY", "open", contact_id))
        await p.crm.upsert_deal(Deal("o-9", "Order 9", 1200.4, "JPY", "won", contact_id))

        first, second = p.fake.sent("POST", "/crm/v6/Deals/upsert")
        assert first["duplicate_check_fields"] == second["duplicate_check_fields"] == ["Habla_Ref"]
        assert "Closing_Date" in first["data"][0] and "Closing_Date" not in second["data"][0]
        assert second["data"][0]["Amount"] == 1200  # no decimals for yen
        deal = p.one("deal")
        assert (deal["Stage"], deal["Contact_Name"]["id"]) == ("Closed Won", contact_id)


async def test_refs_are_escaped_in_search_criteria() -> None:
    async with zoho() as p:
        ref = "order (42), x"
        deal_id = await p.crm.upsert_deal(Deal(ref, "Order", 1.0, "EUR", "open"))
        assert await p.crm.move_deal(ref, "lost") == deal_id

        search = p.fake.requests[-2]
        assert search.query["criteria"] == r"(Habla_Ref:equals:order \(42\)\, x)"
        assert p.one("deal")["Stage"] == "Closed Lost"


async def test_note_goes_on_the_contact_when_the_deal_is_someone_elses() -> None:
    async with zoho() as p:
        ana = await p.crm.upsert_contact(ANA)
        other = await p.crm.upsert_contact(Contact(phone="+34600000002", last_name="Other"))
        await p.crm.upsert_deal(Deal("o-2", "Order 2", 1.0, "EUR", "open", other))

        await p.crm.add_note(ana, "hola", "conv-2", deal_ref="o-2")

        parent = p.one("note")["Parent_Id"]
        assert (parent["module"]["api_name"], parent["id"]) == ("Contacts", ana)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("dc", "api", "accounts"),
    [
        ("com", "https://www.zohoapis.com", "https://accounts.zoho.com"),
        ("eu", "https://www.zohoapis.eu", "https://accounts.zoho.eu"),
        ("com.au", "https://www.zohoapis.com.au", "https://accounts.zoho.com.au"),
        ("ca", "https://www.zohoapis.ca", "https://accounts.zohocloud.ca"),
        ("com.cn", "https://www.zohoapis.com.cn", "https://accounts.zoho.com.cn"),
    ],
)
async def test_data_centre_chooses_the_urls(
    tmp_path: Path, dc: str, api: str, accounts: str
) -> None:
    settings = settings_for(
        tmp_path,
        HABLA_CRM="zoho",
        HABLA_ZOHO_DC=dc,
        ZOHO_CLIENT_ID=ZOHO_CLIENT[0],
        ZOHO_CLIENT_SECRET=ZOHO_CLIENT[1],
        ZOHO_REFRESH_TOKEN=ZOHO_REFRESH,
    )
    crm = CRMS.load(settings.commerce.crm, CRM).from_settings(settings)
    try:
        assert isinstance(crm, ZohoCRM)
        assert crm.api_url == f"{api}/crm/v6"
        assert crm.token_url == f"{accounts}/oauth/v2/token"
        assert ZOHO_REFRESH not in repr(crm) and ZOHO_CLIENT[1] not in repr(crm)
    finally:
        await crm.close()


async def test_zoho_from_settings(tmp_path: Path) -> None:
    custom = {"Leads": ["Order_Ref"], "Deals": ["Order_Ref"]}
    async with zoho(custom_fields=custom, unique_fields=custom, multi_currency=False) as p:
        settings = settings_for(
            tmp_path,
            HABLA_CRM="zoho",
            ZOHO_CLIENT_ID=ZOHO_CLIENT[0],
            ZOHO_CLIENT_SECRET=ZOHO_CLIENT[1],
            ZOHO_REFRESH_TOKEN=ZOHO_REFRESH,
            HABLA_ZOHO_API_BASE=p.fake.url,
            HABLA_ZOHO_ACCOUNTS_URL=p.fake.url,
            HABLA_ZOHO_REF_FIELD="Order_Ref",
            HABLA_SEND_TIMEOUT_S="3.5",
            HABLA_CRM_FIELD_MAP="stage.open=Needs Analysis",
        )
        crm = CRMS.load(settings.commerce.crm, CRM).from_settings(settings)
        try:
            assert isinstance(crm, ZohoCRM)
            assert crm.timeout_s == 3.5  # send.timeout_s
            contact_id = await crm.upsert_contact(ANA)
            await crm.upsert_deal(Deal("o-1", "Order", 1.0, "EUR", "open", contact_id))
            await crm.create_lead(ANA, "phone", "lead-1")
        finally:
            await crm.close()

        deal = p.one("deal")
        assert (deal["Order_Ref"], deal["Stage"]) == ("o-1", "Needs Analysis")
        assert "Currency" not in deal  # a single-currency org
        assert p.one("lead")["Order_Ref"] == "lead-1"


def test_settings_name_missing_credentials_and_a_bad_data_centre(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="HABLA_ZOHO_DC.*'mars' is not one of com, eu"):
        settings_for(tmp_path, HABLA_CRM="zoho", HABLA_ZOHO_DC="mars")
    with pytest.raises(SettingsError) as raised:
        settings_for(tmp_path, HABLA_CRM="zoho", HABLA_ZOHO_API_BASE="ftp://example.com")
    text = str(raised.value)
    assert "ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET and ZOHO_REFRESH_TOKEN are required" in text
    assert "HABLA_ZOHO_API_BASE" in text


def test_zoho_names_every_config_problem() -> None:
    with pytest.raises(ValueError, match="client_id.*client_secret.*refresh_token") as raised:
        ZohoCRM("", "", "", dc="mars", ref_field="", contact_fields={"mobile": "Mobile"})
    text = str(raised.value)
    assert "dc 'mars'" in text and "ref_field" in text and "'mobile'" in text
