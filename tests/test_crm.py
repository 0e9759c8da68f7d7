"""The CRM adapters, through the real SDKs (hubspot-api-client, simple-salesforce), against
local fakes that speak HubSpot's and Salesforce's wire protocols (Salesforce over HTTPS
with a certificate made for this run)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests

from commerce.crm.base import CRM, Contact, Deal, field_map
from commerce.crm.hubspot import HubSpotCRM
from commerce.crm.pipedrive import PipedriveCRM
from commerce.crm.salesforce import SalesforceCRM
from commerce.crm.zoho import ZohoCRM
from runtime.providers import CRMS
from runtime.retry import PermanentError, TransientError
from runtime.settings import Settings, SettingsError, load_settings
from tests.fakes.hubspot_api import FakeHubSpotAPI
from tests.fakes.pipedrive_api import REF_FIELD as PIPEDRIVE_REF
from tests.fakes.pipedrive_api import FakePipedriveAPI
from tests.fakes.salesforce_api import FakeSalesforceAPI, self_signed_cert
from tests.fakes.zoho_api import FakeZohoAPI

HUBSPOT_TOKEN = "pat-eu1-00000000-test-token"
SF_SESSION = "00D000000000001!AQ4AQ.test-session-id"
PIPEDRIVE_TOKEN = "2f3c0a9e5b7d4c1e8a6f0b3d9c7e5a1f2b4d6c8e"
ZOHO_CLIENT = ("1000.TESTCLIENTID0000000000000000", "0123456789abcdef0123456789abcdef01")
ZOHO_REFRESH = "1000.3421ad0e1a6fe44663ea112b8b1c4fdf.cd38e645e3d7423651d17368855bc1c5"
ANA = Contact(
    phone="+34600111222",
    email="ana@example.com",
    first_name="Ana",
    last_name="García",
    language="es",
)


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
        if isinstance(self.fake, FakeZohoAPI):
            modules = {"contact": "Contacts", "lead": "Leads", "deal": "Deals", "note": "Notes"}
            return self.fake.objects(modules[kind])
        if isinstance(self.fake, FakePipedriveAPI):
            kinds = {"contact": "persons", "lead": "leads", "deal": "deals", "note": "notes"}
            return [r | {"id": str(r["id"])} for r in self.fake.flat(kinds[kind])]
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
        if isinstance(self.fake, FakePipedriveAPI):
            value = record.get(f"{to_kind.replace('contact', 'person')}_id")
            return {str(value)} if value else set()
        if isinstance(self.fake, FakeZohoAPI):
            return zoho_links(self.fake, kind, record, to_kind)
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
PIPEDRIVE_FIELDS = {
    "first_name": "first_name",
    "email": "email",
    "amount": "value",
    "stage": "status",
    "currency": "currency",
    "note": "content",
    "open": "open",
    "won": "won",
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
ZOHO_FIELDS = {
    "first_name": "First_Name",
    "email": "Email",
    "amount": "Amount",
    "stage": "Stage",
    "currency": "Currency",
    "note": "Note_Content",
    "open": "Qualification",
    "won": "Closed Won",
}


def zoho_links(fake: FakeZohoAPI, kind: str, record: dict[str, Any], to_kind: str) -> set[str]:
    """A deal's contact (Contact_Name); a note's one parent (Parent_Id), and for a note
    on a deal, the deal's contact (Zoho shows it on the contact through the deal)."""
    if kind == "deal":
        return {record["Contact_Name"]["id"]} if record.get("Contact_Name") else set()
    parent = record["Parent_Id"]
    module = parent["module"]["api_name"]
    if to_kind == "deal":
        return {parent["id"]} if module == "Deals" else set()
    if module == "Deals":
        deal = fake.records["Deals"][parent["id"]]
        return {deal["Contact_Name"]["id"]} if deal.get("Contact_Name") else set()
    return {parent["id"]} if module == "Contacts" else set()


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


@contextlib.asynccontextmanager
async def pipedrive(**fake_kw: Any) -> AsyncIterator[Provider]:
    fake = FakePipedriveAPI(PIPEDRIVE_TOKEN, **fake_kw)
    await fake.start()
    made: list[CRM] = []

    def new(**kw: Any) -> CRM:
        args = {
            "api_token": PIPEDRIVE_TOKEN,
            "base_url": fake.url,
            "ref_field": PIPEDRIVE_REF,
            "timeout_s": 2.0,
            **kw,
        }
        crm = PipedriveCRM(**args)
        made.append(crm)
        return crm

    try:
        yield Provider("pipedrive", new(), fake, new, PIPEDRIVE_FIELDS)
    finally:
        for crm in made:
            await crm.close()
        await fake.close()


@contextlib.asynccontextmanager
async def zoho(**fake_kw: Any) -> AsyncIterator[Provider]:
    """Zoho CRM (a multi-currency org) and its accounts server on one local fake."""
    fake = FakeZohoAPI(*ZOHO_CLIENT, ZOHO_REFRESH, **{"multi_currency": True, **fake_kw})
    await fake.start()
    made: list[CRM] = []

    def new(**kw: Any) -> CRM:
        args = {
            "client_id": ZOHO_CLIENT[0],
            "client_secret": ZOHO_CLIENT[1],
            "refresh_token": ZOHO_REFRESH,
            "api_base": fake.url,
            "accounts_url": fake.url,
            "timeout_s": 2.0,
            "multi_currency": True,
            **kw,
        }
        crm = ZohoCRM(**args)
        made.append(crm)
        return crm

    try:
        yield Provider("zoho", new(), fake, new, ZOHO_FIELDS)
    finally:
        for crm in made:
            await crm.close()
        await fake.close()


@pytest.fixture(params=["hubspot", "salesforce", "pipedrive", "zoho"])
async def provider(
    request: pytest.FixtureRequest, sf_cert: tuple[Path, Path]
) -> AsyncIterator[Provider]:
    pairs = {"hubspot": hubspot, "salesforce": lambda: salesforce(sf_cert), "pipedrive": pipedrive}
    pairs["zoho"] = zoho
    pair = pairs[request.param]()
    async with pair as p:
        yield p


@contextlib.asynccontextmanager
async def answer_held(fake: Any) -> AsyncIterator[asyncio.Event]:
    """The fake records its next request at once but answers it only when the yielded
    event is set (at the latest on leaving the block)."""
    release = asyncio.Event()
    begin = fake._begin

    async def held(request: Any) -> Any:
        fake._begin = begin  # the next request only
        body = await begin(request)
        await release.wait()
        return body

    fake._begin = held
    try:
        yield release
    finally:
        release.set()
        fake._begin = begin


def settings_for(bot_dir: Path, **env: str) -> Settings:
    """Settings from the environment only (no habla.yml), for a bot folder of its own."""
    (bot_dir / "domain.yml").write_text("version: '3.1'\n")
    return load_settings(env={"HABLA_BOT_DIR": str(bot_dir), "HABLA_SETTINGS": "", **env})


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
    elif provider.name == "pipedrive":
        contact = provider.one("contact")
        assert lead["title"] == "Ana García (whatsapp)"
        assert lead[PIPEDRIVE_REF] == "lead-ana-1"
        assert str(lead["person_id"]) == contact["id"]
    elif provider.name == "zoho":  # a Lead on its own, upserted by Habla_Ref
        assert (lead["Last_Name"], lead["First_Name"]) == ("García", "Ana")
        assert (lead["Habla_Ref"], lead["Description"]) == ("lead-ana-1", "habla: whatsapp")
        assert provider.records("contact") == []
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
    elif provider.name == "pipedrive":  # HTML content, the ref as its last line
        assert note["content"] == (
            "user: hola<br>bot: &lt;b&gt;hola&lt;/b&gt;, Ana<br><br>[habla-ref: conv-9]"
        )
    elif provider.name == "zoho":  # plain text on the deal, the ref in the title
        assert (note["Note_Content"], note["Note_Title"]) == (transcript, "Conversation [conv-9]")
    else:
        assert (note["Description"], note["Status"]) == (transcript, "Completed")


async def test_wrong_credentials_are_permanent(provider: Provider) -> None:
    keys = {"hubspot": "access_token", "pipedrive": "api_token", "zoho": "refresh_token"}
    key = keys.get(provider.name, "session_id")
    crm = provider.new(**{key: "wrong-token"})
    with pytest.raises(PermanentError, match="401|invalid_code"):
        await crm.upsert_contact(ANA)
    assert provider.records("contact") == []


async def test_503_is_transient_and_the_next_call_succeeds(provider: Provider) -> None:
    provider.fake.fail_next(1, status=503)
    with pytest.raises(TransientError, match="503"):
        await provider.crm.upsert_contact(ANA)

    await provider.crm.upsert_contact(ANA)
    assert len(provider.records("contact")) == 1


async def test_408_is_transient_and_the_next_call_succeeds(provider: Provider) -> None:
    if provider.name == "salesforce":  # a code that is not transient by itself
        provider.fake.fail_next(1, status=408, code="REQUEST_TIMEOUT", message="Timed out")
    else:
        provider.fake.fail_next(1, status=408)
    with pytest.raises(TransientError, match="408") as raised:
        await provider.crm.upsert_contact(ANA)
    assert raised.value.transient

    await provider.crm.upsert_contact(ANA)
    assert len(provider.records("contact")) == 1


async def test_service_down_is_transient(provider: Provider) -> None:
    contact_id = await provider.crm.upsert_contact(ANA)
    await provider.fake.go_down()
    sent = len(provider.fake.requests)
    with pytest.raises(TransientError) as raised:
        await provider.crm.upsert_contact(ANA)
    assert raised.value.transient
    assert str(raised.value).startswith(provider.name)
    assert len(provider.fake.requests) == sent  # refused: nothing reached the fake

    await provider.fake.come_up()
    assert await provider.crm.upsert_contact(ANA) == contact_id
    assert len(provider.records("contact")) == 1


async def test_slow_answer_times_out_as_transient(provider: Provider) -> None:
    crm = provider.new(timeout_s=0.2)
    async with answer_held(provider.fake) as release:
        with pytest.raises(TransientError, match=f"^{provider.name}: no answer in 0.2 s$") as e:
            await crm.upsert_contact(ANA)
        assert e.value.transient
        lookup = provider.fake.requests[-1]  # the fake got the lookup and holds its answer
        paths = {"hubspot": "/contacts/search", "pipedrive": "/persons/search"}
        paths["zoho"] = "/crm/v6/Contacts/search"
        assert paths.get(provider.name, "/query") in lookup.path
        release.set()

    await crm.upsert_contact(ANA)  # the same adapter works on
    assert len(provider.records("contact")) == 1  # the timed-out call created nothing


async def test_other_errors_fall_back_to_the_generic_mapping(provider: Provider) -> None:
    def refused() -> None:
        raise ConnectionRefusedError("connection refused")

    def bug() -> None:
        raise KeyError("oops")

    assert provider.crm.map_error(ConnectionRefusedError()) is None
    with pytest.raises(TransientError, match=provider.name):
        await provider.crm.call(refused)
    with pytest.raises(PermanentError, match="KeyError"):
        await provider.crm.call(bug)


def test_field_map_parses_overrides_and_names_a_bad_entry() -> None:
    assert field_map(" contact.language=preferred_language, stage.won=Won,ref=my_ref ") == {
        "contact": {"language": "preferred_language"},
        "stage": {"won": "Won"},
        "ref": {"": "my_ref"},
    }
    with pytest.raises(SettingsError, match="HABLA_CRM_FIELD_MAP.*'deal=x'"):
        field_map("stage.won=Won,deal=x")


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


async def test_hubspot_from_settings(tmp_path: Path) -> None:
    custom = {"contacts": ["preferred_language"], "deals": ["order_ref"]}
    async with hubspot(custom_properties=custom) as p:
        settings = settings_for(
            tmp_path,
            HABLA_CRM="hubspot",
            HUBSPOT_ACCESS_TOKEN=HUBSPOT_TOKEN,
            HABLA_HUBSPOT_HOST=p.fake.url,
            HABLA_SEND_TIMEOUT_S="3.5",
            HABLA_CRM_FIELD_MAP=(
                "contact.language=preferred_language,stage.open=qualifiedtobuy,ref=order_ref"
            ),
        )
        crm = CRMS.load(settings.commerce.crm, CRM).from_settings(settings)
        try:
            assert isinstance(crm, HubSpotCRM)
            assert crm.timeout_s == 3.5  # send.timeout_s
            contact_id = await crm.upsert_contact(ANA)
            await crm.upsert_deal(Deal("o-1", "Order", 1.0, "EUR", "open", contact_id))
        finally:
            await crm.close()

        assert p.one("contact")["preferred_language"] == "es"
        deal = p.one("deal")
        assert (deal["order_ref"], deal["dealstage"], deal["pipeline"]) == (
            "o-1",
            "qualifiedtobuy",
            "default",
        )
        assert {r.authorization for r in p.fake.requests} == {f"Bearer {HUBSPOT_TOKEN}"}


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
        with pytest.raises(PermanentError, match="CERTIFICATE_VERIFY_FAILED") as raised:
            await crm.upsert_contact(ANA)
        assert not raised.value.transient
        assert p.fake.requests == []  # refused at the handshake: no request was made


async def test_salesforce_from_settings(sf_cert: tuple[Path, Path], tmp_path: Path) -> None:
    shutil.copy(sf_cert[0], tmp_path / "salesforce-ca.pem")
    external = {"Lead": ["Order_Ref__c"], "Opportunity": ["Order_Ref__c"], "Task": []}
    async with salesforce(sf_cert, external_ids=external) as p:
        settings = settings_for(
            tmp_path,
            HABLA_CRM="salesforce",
            HABLA_SALESFORCE_INSTANCE_URL=p.fake.url,
            SALESFORCE_ACCESS_TOKEN=SF_SESSION,
            HABLA_SALESFORCE_CA_BUNDLE="salesforce-ca.pem",  # relative to the bot folder
            HABLA_SEND_TIMEOUT_S="4.5",
            HABLA_CRM_FIELD_MAP="stage.open=Qualification,ref=Order_Ref__c",
        )
        crm = CRMS.load(settings.commerce.crm, CRM).from_settings(settings)
        try:
            assert isinstance(crm, SalesforceCRM)
            assert crm.timeout_s == 4.5  # send.timeout_s
            assert crm.session.trust_env is False
            assert crm.session.verify == str(tmp_path / "salesforce-ca.pem")
            contact_id = await crm.upsert_contact(ANA)
            await crm.upsert_deal(Deal("o-1", "Order", 1.0, "EUR", "open", contact_id))
        finally:
            await crm.close()

        deal = p.one("deal")
        assert (deal["Order_Ref__c"], deal["StageName"]) == ("o-1", "Qualification")
        assert deal["ContactId"] == contact_id


def test_salesforce_names_every_config_problem() -> None:
    with pytest.raises(ValueError, match="credentials are required.*ref_field"):
        SalesforceCRM(username="ana@example.com", ref_field="")
