"""Salesforce CRM through ``simple-salesforce`` (REST API: SOQL queries and sObject rows).

* Contacts are found with SOQL by phone (``Phone``, ``MobilePhone``), then e-mail, and
  updated or created; values are quoted with ``format_soql``. LastName is required:
  without a last name the first name (else phone, e-mail) stands in on creation.
* Leads and tasks (the notes) are upserted by an External ID field, ``ref_field``
  (default ``Habla_Ref__c``): ``PATCH /sobjects/{object}/{field}/{ref}`` creates the
  record or updates the one stored under ``ref``, atomically. A lead gets the contact's
  phone, e-mail and names (the standard Lead fields), ``Company`` and ``LeadSource``.
* An opportunity is looked up by ``ref_field`` first: found, it is updated by Id;
  otherwise it is upserted by ``ref_field`` with what only a creation may set:
  ``CloseDate`` (today + 30 days) and ``opportunity_contact_field`` (default
  ``ContactId``, API 46.0+, create-only; Salesforce makes the contact the primary
  OpportunityContactRole). A custom, updatable lookup field named instead is written
  on updates too.
* A note is a completed Task: ``Subject``, ``Description`` (the transcript), ``WhoId``
  (the contact) and ``WhatId`` (the opportunity stored under ``deal_ref``, if given).
  A deal that is not stored (yet) raises :class:`TransientError`, so the outbox retries.

What the org needs: a text field ``ref_field`` marked *External ID* and *Unique* on
Lead, Opportunity and Task (an Activity custom field); ``stage_map`` values among the
StageName picklist; ``multi_currency=True`` only in a multi-currency org (it sends
``CurrencyIsoCode``; otherwise the org's currency applies); a Contact field for
``language`` if wanted (``contact_fields={"language": "..."}``; none by default).

simple-salesforce is synchronous (requests): every call runs through :meth:`CRM.call`,
on the base's thread pool, bounded by ``timeout_s`` (``send.timeout_s``); a timeout
adapter mounted on the session also bounds each request at the socket (simple-salesforce
passes no timeout), so a pool thread is not held long after the caller gave up. The
contact lookup is :meth:`CRM.upsert_contact` over one SOQL query. This module builds
the queries and records and reads the answers and Salesforce's errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Any, ClassVar, cast

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce, SalesforceError, SFType, format_external_id, format_soql

from commerce.crm.base import CRM, Contact, Deal
from runtime.errors import HablaError, PermanentError, TransientError, error_for_status
from runtime.settings import Settings

# habla field -> Contact field ("" for none: standard Contacts have no language field)
CONTACT_FIELDS: Mapping[str, str] = {
    "phone": "Phone",
    "email": "Email",
    "first_name": "FirstName",
    "last_name": "LastName",
    "language": "",
}
# habla stage -> Opportunity StageName
STAGES: Mapping[str, str] = {"open": "Prospecting", "won": "Closed Won", "lost": "Closed Lost"}
REF_FIELD = "Habla_Ref__c"
# errorCodes worth retrying whatever the HTTP status (the daily API limit is a 403)
TRANSIENT_CODES = {"REQUEST_LIMIT_EXCEEDED", "UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE"}
DESCRIPTION_MAX = 32_000  # Task.Description
CLOSE_IN_DAYS = 30
CREATE_ONLY_CONTACT_FIELD = "ContactId"  # Opportunity.ContactId: set on create only


class SalesforceCRM(CRM):
    name: ClassVar[str] = "salesforce"
    CONTACT_FIELDS: ClassVar[Mapping[str, str]] = CONTACT_FIELDS
    STAGES: ClassVar[Mapping[str, str]] = STAGES
    stage_label: ClassVar[str] = "StageName"

    @classmethod
    def from_settings(cls, settings: Settings) -> SalesforceCRM:
        c = settings.commerce
        ref, options = cls.settings_options(settings)
        ca_bundle = str(settings.path(c.salesforce_ca_bundle)) if c.salesforce_ca_bundle else ""
        return cls(
            instance_url=c.salesforce_instance_url,
            session_id=c.salesforce_token,
            ca_bundle=ca_bundle,
            ref_field=ref or REF_FIELD,
            **options,
        )

    def __init__(
        self,
        instance_url: str = "",
        session_id: str = "",
        *,
        username: str = "",
        password: str = "",
        security_token: str = "",
        domain: str = "login",
        consumer_key: str = "",
        consumer_secret: str = "",
        session: requests.Session | None = None,
        ca_bundle: str = "",
        api_version: str = "",
        timeout_s: float = 10.0,
        contact_fields: Mapping[str, str] | None = None,
        stage_map: Mapping[str, str] | None = None,
        ref_field: str = REF_FIELD,
        company: str = "[not provided]",
        multi_currency: bool = False,
        opportunity_contact_field: str = "ContactId",
        note_subject: str = "Conversation",
        max_workers: int = 4,
    ) -> None:
        """Credentials, one of: ``instance_url`` + ``session_id`` (an OAuth access
        token); ``username`` + ``password`` + ``security_token`` (+ ``domain``, "login"
        or "test"); ``consumer_key`` + ``consumer_secret`` with ``domain`` the My Domain
        ("yourorg.my"), for the client-credentials flow.

        Without a ``session``, the adapter opens (and closes) its own, which ignores
        proxy settings from the environment and verifies the host with ``ca_bundle``
        when given (else the system's CAs)."""
        problems = []
        if session_id and not instance_url:
            problems.append("instance_url is required with session_id")
        elif not (
            (instance_url and session_id)
            or (username and password and security_token)
            or (consumer_key and consumer_secret)
        ):
            problems.append(
                "credentials are required: instance_url and session_id, or username, "
                "password and security_token, or consumer_key and consumer_secret"
            )
        if not ref_field:
            problems.append("ref_field must name an External ID field")
        super().__init__(
            timeout_s=timeout_s,
            max_workers=max_workers,
            stage_map=stage_map,
            contact_fields=contact_fields,
            problems=problems,
        )
        self._login: dict[str, Any] = {"domain": domain}
        if instance_url and session_id:
            self._login = {"instance_url": instance_url, "session_id": session_id}
        elif username:
            self._login |= {
                "username": username,
                "password": password,
                "security_token": security_token,
            }
        else:
            self._login |= {"consumer_key": consumer_key, "consumer_secret": consumer_secret}
        if api_version:
            self._login["version"] = api_version
        self._own_session = session is None
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no proxy or netrc surprises: the configured host only
            if ca_bundle:
                session.verify = ca_bundle
        self.session = session
        self.session.mount("https://", _TimeoutAdapter(self.sdk_timeout_s))
        self.ref_field = ref_field
        self.company = company
        self.multi_currency = multi_currency
        self.opportunity_contact_field = opportunity_contact_field
        self.note_subject = note_subject
        self._sf: Salesforce | None = None
        self._connecting = asyncio.Lock()

    async def start(self) -> None:
        """Log in (password and client-credentials flows call Salesforce here)."""
        async with self._connecting:
            if self._sf is None:
                self._sf = await self.call(Salesforce, session=self.session, **self._login)

    async def close(self) -> None:
        await super().close()
        if self._own_session:
            self.session.close()

    def map_error(self, error: Exception) -> HablaError | None:
        if isinstance(error, (SalesforceError, requests.RequestException)):
            return api_error(error)
        return None

    # ------------------------------------------------------------------ CRM

    async def create_lead(self, contact: Contact, source: str, ref: str) -> str:
        fields = self._person_fields(contact, creating=True, with_language=False)
        fields["Company"] = self.company
        if source:
            fields["LeadSource"] = source
        return await self._upsert("Lead", ref, fields)

    async def upsert_deal(self, deal: Deal) -> str:
        fields: dict[str, Any] = {
            "Name": deal.name,
            "Amount": deal.amount,
            "StageName": self.stage(deal.stage),
        }
        if self.multi_currency:
            fields["CurrencyIsoCode"] = deal.currency.upper()
        fields.update(deal.extra)
        link = self.opportunity_contact_field
        found = await self._find_id("Opportunity", deal.ref)
        if found:
            if deal.contact_id and link and link != CREATE_ONLY_CONTACT_FIELD:
                fields[link] = deal.contact_id
            await self._sobject("Opportunity", "update", found, fields)
            return found
        fields["CloseDate"] = (date.today() + timedelta(days=CLOSE_IN_DAYS)).isoformat()
        if deal.contact_id and link:
            fields[link] = deal.contact_id
        return await self._upsert("Opportunity", deal.ref, fields)

    async def move_deal(self, ref: str, stage: str) -> str:
        fields = {"StageName": self.stage(stage)}
        found = await self._require_opportunity(ref)
        await self._sobject("Opportunity", "update", found, fields)
        return found

    async def add_note(self, contact_id: str, text: str, ref: str, deal_ref: str = "") -> str:
        fields = {
            "Subject": self.note_subject,
            "Description": text[:DESCRIPTION_MAX],
            "WhoId": contact_id,
            "Status": "Completed",
            "ActivityDate": date.today().isoformat(),
        }
        if deal_ref:
            fields["WhatId"] = await self._require_opportunity(deal_ref)
        return await self._upsert("Task", ref, fields)

    # ------------------------------------------------------------------ contacts

    def _phone_fields(self) -> Sequence[str]:
        return [self.contact_fields["phone"], "MobilePhone"]

    async def _find_contacts(
        self, wanted: Sequence[tuple[str, str]]
    ) -> list[tuple[str, Mapping[str, Any]]]:
        columns = ", ".join(dict.fromkeys(["Id", *(f for f, _ in wanted)]))
        where = " OR ".join(f"{f} = {{{i}}}" for i, (f, _) in enumerate(wanted))
        soql = format_soql(
            f"SELECT {columns} FROM Contact WHERE {where} ORDER BY CreatedDate LIMIT 10",
            *(v for _, v in wanted),
        )
        return [(str(r["Id"]), r) for r in await self._query(soql)]

    def _contact_record(self, contact: Contact, *, creating: bool) -> dict[str, Any]:
        fields = self._person_fields(contact, creating=creating, with_language=True)
        fields.update(contact.extra)
        return fields

    async def _create_contact(self, fields: Mapping[str, Any]) -> str:
        created = await self._sobject("Contact", "create", dict(fields))
        return str(created["id"])

    async def _update_contact(self, contact_id: str, fields: Mapping[str, Any]) -> None:
        await self._sobject("Contact", "update", contact_id, dict(fields))

    def _person_fields(
        self, contact: Contact, *, creating: bool, with_language: bool
    ) -> dict[str, Any]:
        """The contact's mapped fields. LastName is required on Contact and Lead: without
        a last name, the first name (else the phone or e-mail) stands in for it on
        creation, and an update leaves the names alone."""
        skip = {"first_name"} if not contact.last_name else set()
        if not with_language:
            skip.add("language")
        fields = self.mapped_fields(contact, skip)
        if creating and not contact.last_name:
            last = self.contact_fields["last_name"] or "LastName"
            fields[last] = contact.first_name or contact.phone or contact.email
        return fields

    # ------------------------------------------------------------------ requests

    async def _sobject(self, name: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``sf.<name>.<method>(*args, **kwargs)``, e.g. ``sf.Contact.update(id, fields)``."""
        await self.start()
        sobject = cast(SFType, getattr(self._sf, name))
        return await self.call(getattr(sobject, method), *args, **kwargs)

    async def _find_id(self, sobject: str, ref: str) -> str:
        soql = format_soql(f"SELECT Id FROM {sobject} WHERE {self.ref_field} = {{}} LIMIT 1", ref)
        records = await self._query(soql)
        return str(records[0]["Id"]) if records else ""

    async def _require_opportunity(self, ref: str) -> str:
        found = await self._find_id("Opportunity", ref)
        if not found:
            raise TransientError(f"salesforce: no Opportunity with {self.ref_field}={ref!r} (yet)")
        return found

    async def _query(self, soql: str) -> list[dict[str, Any]]:
        await self.start()
        assert self._sf is not None
        result = await self.call(self._sf.query, soql)
        return list(result.get("records") or [])

    async def _upsert(self, sobject: str, ref: str, fields: Mapping[str, Any]) -> str:
        """Create or update the ``sobject`` stored under ``ref``. Its id."""
        record_id = format_external_id(self.ref_field, ref)
        response = await self._sobject(
            sobject, "upsert", record_id, dict(fields), raw_response=True
        )
        if response.status_code in (200, 201) and response.content:
            return str(response.json()["id"])
        # 204: an update before API 46.0 answers without the id
        found = await self._find_id(sobject, ref)
        if not found:
            raise PermanentError(f"salesforce: upserted {sobject} {ref!r} but cannot find it")
        return found


def api_error(e: SalesforceError | requests.RequestException) -> HablaError:
    """By HTTP status (408, 429, 5xx transient) or errorCode (limits, lock contention);
    timeouts and connection errors are transient; anything else (bad request,
    credentials, an untrusted certificate) is permanent."""
    if isinstance(e, SalesforceError):
        code, message = _first_error(e.content)
        reason = f"salesforce {e.status} {code}: {message}".replace("  ", " ")
        if code in TRANSIENT_CODES:
            return TransientError(reason)
        return error_for_status(e.status, reason)
    reason = f"salesforce: {type(e).__name__}: {e}"
    if isinstance(e, requests.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(e):
        return PermanentError(reason)
    if isinstance(
        e,
        (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ),
    ):
        return TransientError(reason)
    return PermanentError(reason)


def _first_error(content: Any) -> tuple[str, str]:
    """errorCode and message of Salesforce's ``[{"message", "errorCode"}]`` answer."""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("errorCode", "")), str(content[0].get("message", ""))
    if isinstance(content, dict):  # OAuth errors
        return str(content.get("error", "")), str(content.get("error_description", ""))
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    return "", str(content)[:200]


class _TimeoutAdapter(HTTPAdapter):
    """Gives every request on the session a timeout (simple-salesforce sets none)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s

    def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout_s
        return super().send(request, **kwargs)
