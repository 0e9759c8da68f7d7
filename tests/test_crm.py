"""The CRM adapters, through the real SDKs (hubspot-api-client, simple-salesforce), against
local fakes that speak HubSpot's and Salesforce's wire protocols (Salesforce over HTTPS
with a certificate made for this run)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests

from commerce.crm.base import CRM, Contact, Deal
from commerce.crm.hubspot import HubSpotCRM
from commerce.crm.salesforce import SalesforceCRM
from runtime.retry import PermanentError, TransientError
from tests.fakes.hubspot_api import FakeHubSpotAPI
from tests.fakes.salesforce_api import FakeSalesforceAPI, self_signed_cert

HUBSPOT_TOKEN = "pat-eu1-00000000-test-token"
SF_SESSION = "00D000000000001!AQ4AQ.test-session-id"
ANA = Contact(
    phone="+34600111222",
    email="ana@example.com",
    first_name="Ana",
    last_name="García",
    language="es",
)
FAST = 2.0  # seconds: a refused connection or a 0.3 s timeout must fail well within this


@pytest.fixture(scope="session")
def sf_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("salesforce-tls"))


def sf_session(cert: Path | None) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies from the environment
    if cert is not None:
        session.verify = str(cert)
    return session


# ---------------------------------------------------------------- one view over both fakes


@dataclass
class Provider:
    """An adapter, its fake, a factory for more adapters on that fake, and the fake's
    records seen through habla's words (contact, lead, deal, note)."""

    name: str
    crm: CRM
    fake: Any
    new: Callable[..., CRM]
    fields: dict[str, str]  # habla word -> provider field

    def records(self, kind: str) -> list[dict[str, Any]]:
        if isinstance(self.fake, FakeHubSpotAPI):
            kinds = {"contact": "contacts", "lead": "leads", "deal": "deals", "note": "notes"}
            return [r["properties"] | {"id": r["id"]} for r in self.fake.objects(kinds[kind])]
        sobjects = {"contact": "Contact", "lead": "Lead", "deal": "Opportunity", "note": "Task"}
        return [r | {"id": r["Id"]} for r in self.fake.objects(sobjects[kind])]

    def one(self, kind: str) -> dict[str, Any]:
        records = self.records(kind)
        assert len(records) == 1, records
        return records[0]

    def links(self, kind: str, record_id: str, to_kind: str) -> set[str]:
        if isinstance(self.fake, FakeHubSpotAPI):
            kinds = {"contact": "contacts", "lead": "leads", "deal": "deals", "note": "notes"}
            return self.fake.linked(kinds[kind], record_id, kinds[to_kind])
        record = next(r for r in self.records(kind) if r["id"] == record_id)
        lookup = {("deal", "contact"): "ContactId", ("note", "contact"): "WhoId"}
        lookup |= {("note", "deal"): "WhatId"}
        value = record.get(lookup[(kind, to_kind)])
        return {value} if value else set()


HUBSPOT_FIELDS = {
    "first_name": "firstname",
    "email": "email",
    "amount": "amount",
    "stage": "dealstage",
    "currency": "deal_currency_code",
    "note": "hs_note_body",
    "open": "appointmentscheduled",
    "won": "closedwon",
}
SALESFORCE_FIELDS = {
    "first_name": "FirstName",
    "email": "Email",
    "amount": "Amount",
    "stage": "StageName",
    "currency": "CurrencyIsoCode",
    "note": "Description",
    "open": "Prospecting",
    "won": "Closed Won",
}


@contextlib.asynccontextmanager
async def hubspot(**fake_kw: Any) -> AsyncIterator[Provider]:
    fake = FakeHubSpotAPI(HUBSPOT_TOKEN, **fake_kw)
    await fake.start()
    made: list[CRM] = []

    def new(**kw: Any) -> CRM:
        crm = HubSpotCRM(
            **{"access_token": HUBSPOT_TOKEN, "host": fake.url, "timeout_s": 2.0, **kw}
        )
        made.append(crm)
        return crm

    try:
        yield Provider("hubspot", new(), fake, new, HUBSPOT_FIELDS)
    finally:
        for crm in made:
            await crm.close()
        await fake.close()


@contextlib.asynccontextmanager
async def salesforce(cert: tuple[Path, Path], **fake_kw: Any) -> AsyncIterator[Provider]:
    fake = FakeSalesforceAPI(SF_SESSION, cert, **{"multi_currency": True, **fake_kw})
    await fake.start()
    made: list[CRM] = []

    def new(**kw: Any) -> CRM:
        args = {
            "instance_url": fake.url,
            "session_id": SF_SESSION,
            "session": sf_session(cert[0]),
            "timeout_s": 2.0,
            "multi_currency": True,
            **kw,
        }
        crm = SalesforceCRM(**args)
        made.append(crm)
        return crm

    try:
        yield Provider("salesforce", new(), fake, new, SALESFORCE_FIELDS)
    finally:
        for crm in made:
            await crm.close()
        await fake.close()


@pytest.fixture(params=["hubspot", "salesforce"])
async def provider(
    request: pytest.FixtureRequest, sf_cert: tuple[Path, Path]
) -> AsyncIterator[Provider]:
    pair = hubspot() if request.param == "hubspot" else salesforce(sf_cert)
    async with pair as p:
        yield p


@contextlib.contextmanager
def quickly(limit: float = FAST) -> Iterator[None]:
    start = time.monotonic()
    yield
    assert time.monotonic() - start < limit


# ---------------------------------------------------------------- both providers


async def test_upsert_contact_twice_updates_the_one_contact(provider: Provider) -> None:
    first = await provider.crm.upsert_contact(ANA)
    second = await provider.crm.upsert_contact(replace(ANA, first_name="Anita"))

    assert first == second
    contact = provider.one("contact")
    assert contact["id"] == first
    assert contact[provider.fields["first_name"]] == "Anita"


async def test_contact_is_found_by_phone_then_by_email(provider: Provider) -> None:
    crm = provider.crm
    one = await crm.upsert_contact(
        Contact(phone="+34600000001", email="one@example.com", last_name="One")
    )
    two = await crm.upsert_contact(Contact(email="two@example.com", last_name="Two"))

    assert await crm.upsert_contact(Contact(phone="+34600000001")) == one
    assert await crm.upsert_contact(Contact(email="TWO@example.com")) == two  # any case
    # an unknown phone: the e-mail finds the contact (which gets the new phone)
    assert await crm.upsert_contact(Contact(phone="+34699999999", email="one@example.com")) == (one)
    # both match, different contacts: the phone wins; the e-mail stays where it is
    assert await crm.upsert_contact(Contact(phone="+34699999999", email="two@example.com")) == (one)
    emails = sorted(
        str(r.get(provider.fields["email"])).lower() for r in provider.records("contact")
    )
    assert emails == ["one@example.com", "two@example.com"]


async def test_lead_is_created_once_under_repeat(provider: Provider) -> None:
    first = await provider.crm.create_lead(ANA, "whatsapp", "lead-ana-1")
    second = await provider.crm.create_lead(ANA, "whatsapp", "lead-ana-1")

    assert first == second
    lead = provider.one("lead")
    if provider.name == "hubspot":
        contact = provider.one("contact")
        assert lead["hs_lead_name"] == "Ana García (whatsapp)"
        assert provider.fake.linked("leads", first, "contacts") == {contact["id"]}
    else:
        assert (lead["LastName"], lead["FirstName"]) == ("García", "Ana")
        assert (lead["Company"], lead["LeadSource"]) == ("[not provided]", "whatsapp")
        assert lead["Habla_Ref__c"] == "lead-ana-1"


async def test_deal_upsert_twice_is_one_deal_with_its_contact(provider: Provider) -> None:
    contact_id = await provider.crm.upsert_contact(ANA)
    deal = Deal("order-1001", "Order 1001", 19.9, "eur", "open", contact_id)

    first = await provider.crm.upsert_deal(deal)
    second = await provider.crm.upsert_deal(replace(deal, amount=25.5))

    assert first == second
    record = provider.one("deal")
    f = provider.fields
    assert float(record[f["amount"]]) == 25.5
    assert record[f["stage"]] == f["open"]
    assert record[f["currency"]] == "EUR"
    assert provider.links("deal", first, "contact") == {contact_id}
    if provider.name == "salesforce":  # set on creation only, not pushed back by the update
        assert record["CloseDate"] == (date.today() + timedelta(days=30)).isoformat()
        assert "ContactId" not in provider.fake.sent("PATCH", "/Opportunity/006")[0]


async def test_move_deal_to_won(provider: Provider) -> None:
    deal_id = await provider.crm.upsert_deal(Deal("order-7", "Order 7", 10.0, "EUR", "open"))

    assert await provider.crm.move_deal("order-7", "won") == deal_id
    assert provider.one("deal")[provider.fields["stage"]] == provider.fields["won"]


async def test_move_deal_refuses_unknown_stage_and_waits_for_unknown_ref(
    provider: Provider,
) -> None:
    await provider.crm.upsert_deal(Deal("order-8", "Order 8", 10.0, "EUR", "open"))
    sent = len(provider.fake.requests)
    with pytest.raises(PermanentError, match="stage"):
        await provider.crm.move_deal("order-8", "negotiating")
    assert len(provider.fake.requests) == sent  # refused before any request

    with pytest.raises(TransientError, match="order-404"):
        await provider.crm.move_deal("order-404", "won")


async def test_note_is_attached_to_contact_and_deal_once(provider: Provider) -> None:
    contact_id = await provider.crm.upsert_contact(ANA)
    deal_id = await provider.crm.upsert_deal(
        Deal("order-9", "Order 9", 5.0, "EUR", "open", contact_id)
    )
    transcript = "user: hola\nbot: <b>hola</b>, Ana"

    first = await provider.crm.add_note(contact_id, transcript, "conv-9", deal_ref="order-9")
    second = await provider.crm.add_note(contact_id, transcript, "conv-9", deal_ref="order-9")

    assert first == second
    note = provider.one("note")
    assert provider.links("note", first, "contact") == {contact_id}
    assert provider.links("note", first, "deal") == {deal_id}
    if provider.name == "hubspot":  # HTML body: escaped, line breaks kept
        assert note["hs_note_body"] == "user: hola<br>bot: &lt;b&gt;hola&lt;/b&gt;, Ana"
        assert note["habla_ref"] == "conv-9"
    else:
        assert (note["Description"], note["Status"]) == (transcript, "Completed")


async def test_wrong_credentials_are_permanent(provider: Provider) -> None:
    key = "access_token" if provider.name == "hubspot" else "session_id"
    crm = provider.new(**{key: "wrong-token"})
    with pytest.raises(PermanentError, match="401"):
        await crm.upsert_contact(ANA)
    assert provider.records("contact") == []


async def test_503_is_transient_and_the_next_call_succeeds(provider: Provider) -> None:
    provider.fake.fail_next(1, status=503)
    with pytest.raises(TransientError, match="503"):
        await provider.crm.upsert_contact(ANA)

    await provider.crm.upsert_contact(ANA)
    assert len(provider.records("contact")) == 1


async def test_service_down_is_transient_quickly(provider: Provider) -> None:
    contact_id = await provider.crm.upsert_contact(ANA)
    await provider.fake.go_down()
    with quickly(), pytest.raises(TransientError):
        await provider.crm.upsert_contact(ANA)

    await provider.fake.come_up()
    assert await provider.crm.upsert_contact(ANA) == contact_id


async def test_slow_answer_times_out_as_transient(provider: Provider) -> None:
    crm = provider.new(timeout_s=0.3)
    provider.fake.delay_next(1.0)
    with quickly(0.9), pytest.raises(TransientError, match="(?i)timed? ?out"):
        await crm.upsert_contact(ANA)


# ---------------------------------------------------------------- HubSpot


async def test_hubspot_field_mapping_ref_property_and_stages_are_honoured() -> None:
    custom = {
        "contacts": ["preferred_language"],
        "deals": ["order_ref"],
        "notes": ["order_ref"],
        "leads": ["order_ref"],
    }
    async with hubspot(custom_properties=custom) as p:
        crm = p.new(
            contact_fields={"language": "preferred_language", "phone": "mobilephone"},
            ref_property="order_ref",
            stage_map={"open": "qualifiedtobuy"},
        )
        contact_id = await crm.upsert_contact(ANA)
        await crm.upsert_deal(Deal("o-1", "Order", 1.0, "USD", "open", contact_id))

        created = p.fake.sent("POST", "/crm/v3/objects/contacts")
        search, create = created[0], created[1]
        assert search["filterGroups"][0]["filters"][0]["propertyName"] == "mobilephone"
        assert create["properties"] == {
            "mobilephone": "+34600111222",
            "email": "ana@example.com",
            "firstname": "Ana",
            "lastname": "García",
            "preferred_language": "es",
        }
        deal = p.one("deal")
        assert (deal["order_ref"], deal["dealstage"], deal["pipeline"]) == (
            "o-1",
            "qualifiedtobuy",
            "default",
        )


async def test_hubspot_contact_created_meanwhile_is_updated_not_duplicated() -> None:
    async with hubspot() as p:
        p.fake.search_lag = True  # search does not show the new contact yet
        first = await p.crm.upsert_contact(ANA)
        second = await p.crm.upsert_contact(replace(ANA, first_name="Anita"))

        assert first == second
        assert p.one("contact")["firstname"] == "Anita"


async def test_hubspot_rate_limit_carries_retry_after() -> None:
    async with hubspot() as p:
        p.fake.fail_next(1, status=429, retry_after=7)
        with pytest.raises(TransientError) as raised:
            await p.crm.upsert_deal(Deal("o-2", "Order", 1.0, "EUR", "open"))
        assert raised.value.retry_after == 7.0


async def test_hubspot_deal_update_links_a_new_contact() -> None:
    async with hubspot() as p:
        deal_id = await p.crm.upsert_deal(Deal("o-3", "Order", 1.0, "EUR", "open"))
        contact_id = await p.crm.upsert_contact(ANA)
        await p.crm.upsert_deal(Deal("o-3", "Order", 1.0, "EUR", "won", contact_id))

        assert p.fake.linked("deals", deal_id, "contacts") == {contact_id}
        assert p.one("deal")["dealstage"] == "closedwon"


def test_hubspot_names_every_config_problem() -> None:
    with pytest.raises(ValueError, match="access_token.*contact_fields.*'mobile'"):
        HubSpotCRM("", contact_fields={"mobile": "mobilephone"})


# ---------------------------------------------------------------- Salesforce


async def test_salesforce_field_mapping_and_ref_field_are_honoured(
    sf_cert: tuple[Path, Path],
) -> None:
    external = {"Lead": ["Order_Ref__c"], "Opportunity": ["Order_Ref__c"], "Task": []}
    custom = {"Contact": ["Preferred_Language__c"]}
    async with salesforce(sf_cert, external_ids=external, custom_fields=custom) as p:
        crm = p.new(
            contact_fields={"language": "Preferred_Language__c", "phone": "MobilePhone"},
            ref_field="Order_Ref__c",
            stage_map={"open": "Qualification"},
        )
        contact_id = await crm.upsert_contact(ANA)
        await crm.upsert_deal(Deal("o-1", "Order", 1.0, "USD", "open", contact_id))
        await crm.create_lead(ANA, "phone", "lead-1")

        soql = parse_qs(p.fake.requests[0].query)["q"][0]
        assert "FROM Contact WHERE MobilePhone = '+34600111222' OR Email = 'ana@" in soql
        assert p.fake.sent("POST", "/sobjects/Contact")[0] == {
            "MobilePhone": "+34600111222",
            "Email": "ana@example.com",
            "FirstName": "Ana",
            "LastName": "García",
            "Preferred_Language__c": "es",
        }
        deal = p.one("deal")
        assert (deal["Order_Ref__c"], deal["StageName"]) == ("o-1", "Qualification")
        lead = p.one("lead")
        assert lead["Order_Ref__c"] == "lead-1"
        assert "Preferred_Language__c" not in lead  # a Contact field, not sent to Lead


async def test_salesforce_refs_are_escaped_and_old_api_204_upserts_work(
    sf_cert: tuple[Path, Path],
) -> None:
    async with salesforce(sf_cert) as p:
        crm = p.new(api_version="45.0")  # an update by external id answers 204, no body
        ref = "order/42 'quoted'"
        first = await crm.create_lead(Contact(phone="+34600000042"), "", ref)
        second = await crm.create_lead(Contact(phone="+34600000042", first_name="Leo"), "", ref)

        assert first == second
        lead = p.one("lead")
        assert (lead["Habla_Ref__c"], lead["LastName"]) == (ref, "Leo")
        assert p.fake.requests[-1].path.startswith("/services/data/v45.0/query")


async def test_salesforce_single_currency_org_gets_no_currency(
    sf_cert: tuple[Path, Path],
) -> None:
    async with salesforce(sf_cert, multi_currency=False) as p:
        crm = p.new(multi_currency=False)
        await crm.upsert_deal(Deal("o-5", "Order", 3.0, "EUR", "lost"))

        deal = p.one("deal")
        assert "CurrencyIsoCode" not in deal
        assert deal["StageName"] == "Closed Lost"


async def test_salesforce_request_limit_is_transient(sf_cert: tuple[Path, Path]) -> None:
    async with salesforce(sf_cert) as p:
        p.fake.fail_next(1, status=403, code="REQUEST_LIMIT_EXCEEDED", message="TotalRequests")
        with pytest.raises(TransientError, match="REQUEST_LIMIT_EXCEEDED"):
            await p.crm.upsert_contact(ANA)


async def test_salesforce_rejected_record_is_permanent(sf_cert: tuple[Path, Path]) -> None:
    async with salesforce(sf_cert) as p:
        with pytest.raises(PermanentError, match="INVALID_EMAIL_ADDRESS"):
            await p.crm.upsert_contact(Contact(email="not-an-email", last_name="X"))


async def test_salesforce_untrusted_certificate_is_permanent(sf_cert: tuple[Path, Path]) -> None:
    async with salesforce(sf_cert) as p:
        crm = p.new(session=sf_session(None))  # the system's CAs do not know the fake
        with quickly(), pytest.raises(PermanentError, match="CERTIFICATE_VERIFY_FAILED"):
            await crm.upsert_contact(ANA)


def test_salesforce_names_every_config_problem() -> None:
    with pytest.raises(ValueError, match="credentials are required.*ref_field"):
        SalesforceCRM(username="ana@example.com", ref_field="")
