"""HubSpot CRM through the official ``hubspot-api-client`` (CRM v3 objects, v4 associations).

Every record goes through the generic objects API (``/crm/v3/objects/{type}``) for
contacts, leads, deals and notes alike: find by one property with the search API,
then update the record found or create it (contacts: :meth:`CRM.upsert_contact`, one
search by phone or e-mail). The SDK is synchronous (urllib3): each call runs through
:meth:`CRM.call`, on the base's thread pool, bounded by ``timeout_s``
(``send.timeout_s``); the SDK's own urllib3 retries are off because the outbox owns
retries. This module builds the requests and reads the answers and HubSpot's errors.

What the portal needs:

* a custom single-line text property ``ref_property`` (default ``habla_ref``) on
  **deals**, **leads** and **notes**: habla stores its idempotency key there and searches
  by it. Contacts need none (they are found by phone, then e-mail).
* the Leads object switched on (Sales Hub); a lead is created associated with its
  contact as the primary contact (association type 578), as HubSpot requires.
* ``deal_currency_code`` values among the portal's currencies, and ``stage_map``
  values that are stage ids of ``pipeline``.

HubSpot's search index lags writes by a few seconds. A contact created meanwhile is
still caught (HubSpot answers 409 with the existing id for a duplicate e-mail, and the
adapter updates that contact); a deal, lead or note retried within that window can be
created twice. A deal or note that refers to a deal the search does not show yet
raises :class:`TransientError`, so the outbox tries again later.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar, TypeVar

import urllib3
from hubspot import HubSpot
from hubspot.crm.associations.v4.exceptions import ApiException as AssociationsApiException
from hubspot.crm.objects import SearchApi
from hubspot.crm.objects.exceptions import ApiException

from commerce.catalog import minor_units
from commerce.crm.base import CRM, Contact, Deal
from runtime.errors import HablaError, PermanentError, TransientError, error_for_status
from runtime.settings import Settings

T = TypeVar("T")

# habla field -> HubSpot contact property
CONTACT_FIELDS: Mapping[str, str] = {
    "phone": "phone",
    "email": "email",
    "first_name": "firstname",
    "last_name": "lastname",
    "language": "hs_language",
}
# habla stage -> dealstage id in the default sales pipeline
STAGES: Mapping[str, str] = {
    "open": "appointmentscheduled",
    "won": "closedwon",
    "lost": "closedlost",
}
REF_PROPERTY = "habla_ref"
# HubSpot-defined association type ids
DEAL_TO_CONTACT = 3
NOTE_TO_CONTACT = 202
NOTE_TO_DEAL = 214
LEAD_TO_PRIMARY_CONTACT = 578
NOTE_BODY_MAX = 65_536  # characters HubSpot keeps in hs_note_body

_EXISTING_ID = re.compile(r"Existing ID:\s*(\d+)")
_PARTIAL_MARKUP = re.compile(r"(&[#\w]*|<[^>]*)$")


class ExistingRecord(PermanentError):
    """HubSpot refused a create (409) because the record exists: its id."""

    def __init__(self, reason: str, existing_id: str) -> None:
        super().__init__(reason)
        self.existing_id = existing_id


class HubSpotCRM(CRM):
    name: ClassVar[str] = "hubspot"
    CONTACT_FIELDS: ClassVar[Mapping[str, str]] = CONTACT_FIELDS
    STAGES: ClassVar[Mapping[str, str]] = STAGES
    stage_label: ClassVar[str] = "dealstage"

    @classmethod
    def from_settings(cls, settings: Settings) -> HubSpotCRM:
        c = settings.commerce
        ref, options = cls.settings_options(settings)
        return cls(
            access_token=c.hubspot_token,
            host=c.hubspot_host,
            pipeline=c.hubspot_pipeline,
            ref_property=ref or REF_PROPERTY,
            **options,
        )

    def __init__(
        self,
        access_token: str,
        host: str = "",
        timeout_s: float = 10.0,
        stage_map: Mapping[str, str] | None = None,
        pipeline: str = "default",
        ref_property: str = REF_PROPERTY,
        contact_fields: Mapping[str, str] | None = None,
        max_workers: int = 4,
    ) -> None:
        """``host`` "" is HubSpot's (https://api.hubapi.com). ``stage_map`` and
        ``contact_fields`` override entries of :data:`STAGES` and :data:`CONTACT_FIELDS`;
        a field mapped to "" is not written."""
        problems = []
        if not access_token:
            problems.append("access_token is required")
        if not ref_property:
            problems.append("ref_property must name a property")
        super().__init__(
            timeout_s=timeout_s,
            max_workers=max_workers,
            stage_map=stage_map,
            contact_fields=contact_fields,
            problems=problems,
        )
        self.pipeline = pipeline
        self.ref_property = ref_property
        config: dict[str, Any] = {"access_token": access_token, "retry": urllib3.Retry(0)}
        if host:
            config["host"] = host.rstrip("/")
        client = HubSpot(**config)
        # one urllib3 pool per API package, built once (each SDK property access builds one)
        self._objects = client.crm.objects.basic_api
        self._search = SearchApi(self._objects.api_client)
        self._associations = client.crm.associations.v4.basic_api

    async def close(self) -> None:
        await super().close()
        for api in (self._objects, self._associations):
            api.api_client.rest_client.pool_manager.clear()

    def map_error(self, error: Exception) -> HablaError | None:
        if isinstance(error, (ApiException, AssociationsApiException)):
            return api_error(error)
        if isinstance(error, urllib3.exceptions.HTTPError):  # refused, reset (no SDK retries)
            reason = f"hubspot: {type(error).__name__}: {error}"
            if "CERTIFICATE_VERIFY_FAILED" in reason:
                return PermanentError(reason)
            return TransientError(reason)
        return None

    # ------------------------------------------------------------------ CRM

    async def create_lead(self, contact: Contact, source: str, ref: str) -> str:
        contact_id = await self.upsert_contact(contact)
        name = " ".join(p for p in (contact.first_name, contact.last_name) if p)
        name = name or contact.phone or contact.email
        properties = {
            "hs_lead_name": f"{name} ({source})" if source else name,
            self.ref_property: ref,
        }
        found = await self._find("leads", self.ref_property, ref)
        return await self._write(
            "leads", found, properties, [(contact_id, LEAD_TO_PRIMARY_CONTACT)]
        )

    async def upsert_deal(self, deal: Deal) -> str:
        properties = {
            "dealname": deal.name,
            "amount": _amount(deal.amount, deal.currency),
            "deal_currency_code": deal.currency.upper(),
            "dealstage": self.stage(deal.stage),
            "pipeline": self.pipeline,
            self.ref_property: deal.ref,
            **{k: _text(v) for k, v in deal.extra.items()},
        }
        found = await self._find("deals", self.ref_property, deal.ref)
        links = [(deal.contact_id, DEAL_TO_CONTACT)] if deal.contact_id else []
        deal_id = await self._write("deals", found, properties, links)
        if found and deal.contact_id:  # idempotent PUT of the default deal-contact link
            await self._api(
                self._associations.create_default, "deals", deal_id, "contacts", deal.contact_id
            )
        return deal_id

    async def move_deal(self, ref: str, stage: str) -> str:
        dealstage = self.stage(stage)
        deal_id = await self._require_deal(ref)
        return await self._write("deals", deal_id, {"dealstage": dealstage})

    async def add_note(self, contact_id: str, text: str, ref: str, deal_ref: str = "") -> str:
        links = [(contact_id, NOTE_TO_CONTACT)]
        if deal_ref:
            links.append((await self._require_deal(deal_ref), NOTE_TO_DEAL))
        found = await self._find("notes", self.ref_property, ref)
        properties = {"hs_note_body": _note_body(text), self.ref_property: ref}
        if not found:
            properties["hs_timestamp"] = _now()
        return await self._write("notes", found, properties, links)

    # ------------------------------------------------------------------ contacts

    async def _find_contacts(
        self, wanted: Sequence[tuple[str, str]]
    ) -> list[tuple[str, Mapping[str, Any]]]:
        results = await self._search_eq("contacts", wanted, limit=10)
        return [(str(r.id), r.properties or {}) for r in results]

    def _contact_record(self, contact: Contact, *, creating: bool) -> dict[str, Any]:
        properties = self.mapped_fields(contact)
        properties.update({k: _text(v) for k, v in contact.extra.items()})
        return properties

    async def _create_contact(self, fields: Mapping[str, Any]) -> str:
        try:
            return await self._write("contacts", "", fields)
        except ExistingRecord as e:  # created meanwhile, not searchable yet (409)
            return await self._write("contacts", e.existing_id, fields)

    async def _update_contact(self, contact_id: str, fields: Mapping[str, Any]) -> None:
        await self._write("contacts", contact_id, fields)

    # ------------------------------------------------------------------ requests

    async def _find(self, object_type: str, prop: str, value: str) -> str:
        results = await self._search_eq(object_type, [(prop, value)], limit=1)
        return str(results[0].id) if results else ""

    async def _require_deal(self, ref: str) -> str:
        deal_id = await self._find("deals", self.ref_property, ref)
        if not deal_id:
            raise TransientError(f"hubspot: no deal with {self.ref_property}={ref!r} (yet)")
        return deal_id

    async def _search_eq(
        self, object_type: str, wanted: Iterable[tuple[str, str]], limit: int
    ) -> list[Any]:
        """Records where any ``property == value`` (one filter group each, OR'ed)."""
        wanted = list(wanted)
        request = {
            "filterGroups": [
                {"filters": [{"propertyName": p, "operator": "EQ", "value": v}]} for p, v in wanted
            ],
            "properties": sorted({p for p, _ in wanted}),
            "limit": limit,
        }
        page = await self._api(self._search.do_search, object_type, request)
        return list(page.results or [])

    async def _write(
        self,
        object_type: str,
        object_id: str,
        properties: Mapping[str, Any],
        links: Iterable[tuple[str, int]] = (),
    ) -> str:
        """Update ``object_id`` (associations untouched) or, when it is '', create the
        record with ``links`` (to-id, HubSpot-defined association type id). Its id."""
        if object_id:
            body: dict[str, Any] = {"properties": dict(properties)}
            await self._api(self._objects.update, object_type, object_id, body)
            return object_id
        body = {
            "properties": dict(properties),
            "associations": [
                {
                    "to": {"id": to_id},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": t}],
                }
                for to_id, t in links
            ],
        }
        created = await self._api(self._objects.create, object_type, body)
        return str(created.id)

    async def _api(self, fn: Callable[..., T], *args: Any) -> T:
        """An SDK call, with the SDK's own socket timeout as a backstop."""
        return await self.call(fn, *args, _request_timeout=self.sdk_timeout_s)


def api_error(e: ApiException | AssociationsApiException) -> HablaError:
    """By HTTP status (408, 429, 5xx transient, with Retry-After); a 409 naming the
    existing record is :class:`ExistingRecord`; status 0 is the SDK's wrapper of a
    TLS failure (an untrusted certificate is permanent)."""
    status = int(e.status or 0)
    message = _message(e.body) or str(e.reason or "").strip()
    reason = f"hubspot {status}: {message}"
    if status == 0:
        if "CERTIFICATE_VERIFY_FAILED" in message:
            return PermanentError(reason)
        return TransientError(reason)
    if status == 409 and (m := _EXISTING_ID.search(message)):
        return ExistingRecord(reason, m.group(1))
    retry_after = e.headers.get("Retry-After") if e.headers else None
    return error_for_status(status, reason, retry_after)


def _message(body: Any) -> str:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        return str(body)[:200]
    return str(data.get("message", "")) if isinstance(data, dict) else ""


def _amount(amount: float, currency: str) -> str:
    """The amount with as many decimals as the currency has ("12.345" KWD, "1200" JPY)."""
    return f"{amount:.{minor_units(currency)}f}"


def _text(value: Any) -> str:
    """A property value as HubSpot's API carries it: a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _note_body(text: str) -> str:
    """Plain text as the HTML hs_note_body renders: escaped, line breaks kept."""
    body = html.escape(text).replace("\n", "<br>")
    if len(body) > NOTE_BODY_MAX:  # cut, without leaving half an entity or tag behind
        body = _PARTIAL_MARKUP.sub("", body[:NOTE_BODY_MAX])
    return body


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
