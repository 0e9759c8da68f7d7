"""Pipedrive CRM over its REST API, with aiohttp (there is no official async Python SDK).

API versions: **v2** for persons and deals (``/api/v2/persons``, ``/api/v2/deals`` and
their ``/search``), the versions Pipedrive asks integrations to use; **v1** for leads
and notes (``/api/v1/leads``, ``/api/v1/notes``), which exist in v1 only. Every path
carries the ``/api/`` prefix, which both ``https://api.pipedrive.com`` and a company
domain (``https://yourcompany.pipedrive.com``) serve. The API token travels in the
``x-api-token`` header (never in the URL, so it is in no log line or error).

* A contact is a person, found by phone, then e-mail (``GET /api/v2/persons/search``
  with ``fields=phone`` or ``fields=email`` and ``exact_match=true``, one request each)
  and updated or created (:meth:`CRM.upsert_contact`). Persons have one ``name``: habla
  writes "first last" (Pipedrive derives ``first_name``/``last_name`` from it); an update
  without names leaves the name alone, a creation without names uses the phone or
  e-mail. A phone or e-mail is *added* to the person's list (which a write replaces), so
  a person found by e-mail keeps the phone it had.
* Deals and leads are idempotent by habla's reference (the order id, the lead ref) kept
  in a deal custom text field, ``ref_field``: its API key, a 40-character hash
  (leads have no fields of their own: they use the deal fields). They are looked up by
  ``GET /api/v2/deals/search`` / ``/api/v1/leads/search`` with ``fields=custom_fields``
  and ``exact_match=true``; a hit counts only if one of its custom field values is the
  ref; found, the record is updated, else created.
* A habla stage is a deal ``status`` plus, optionally, a ``stage_id``: "won" and "lost"
  are statuses in Pipedrive (the deal keeps its stage), every other stage is ``status``
  "open". ``stage_map`` (``HABLA_CRM_FIELD_MAP`` ``stage.open=3``) gives the stage id to
  set with each habla stage; none set: Pipedrive's default (the first stage of the
  default pipeline) on creation, unchanged on update.
* A note (``/api/v1/notes``, HTML) is attached to the person and, when given, the deal
  stored under ``deal_ref``. Notes have no custom fields, so the ref is a visible last
  line of the content, ``[habla-ref: <ref>]``: the person's notes are listed
  (``GET /api/v1/notes?person_id=``) and the one carrying the marker is updated instead
  of a second one created.

What the account needs: a deal custom field of type *Text* (searchable, as text fields
are) whose API key is ``ref_field`` (``HABLA_PIPEDRIVE_REF_FIELD``; Settings → Data
fields → Deal → the field → "Copy API key"); ``stage_map`` values that are stage ids;
deal currencies among the account's currencies.

Errors are mapped once, as for every CRM adapter: a request is bounded by ``timeout_s``
(``send.timeout_s``); 408, 429, 5xx, timeouts and refused connections are
:class:`TransientError` (a 429 with the wait Pipedrive asks for: ``Retry-After``, else
``x-ratelimit-reset``); 400, 401, 403, 404 and an untrusted certificate are
:class:`PermanentError`. A deal that a note or a move refers to and that the search
does not show (yet) is transient, so the outbox tries again later.

Pipedrive's search index follows writes with a short delay: as with HubSpot, a person,
deal or lead created moments before a retry of the same write may not be found by it
and be created twice. Activities are not written (a note carries the conversation).
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import aiohttp

from commerce.catalog import minor_units
from commerce.crm.base import CRM, SDK_GRACE_S, Contact, Deal
from runtime.errors import (
    HablaError,
    PermanentError,
    TransientError,
    classify,
    error_for_status,
    parse_retry_after,
)
from runtime.settings import Settings

BASE_URL = "https://api.pipedrive.com"
# habla field -> person field: "phone", "email" (the person's lists), "first_name",
# "last_name" (the parts of its name), "" (not written) or a custom field's API key
CONTACT_FIELDS: Mapping[str, str] = {
    "phone": "phone",
    "email": "email",
    "first_name": "first_name",
    "last_name": "last_name",
    "language": "",  # persons have no language field: map it to a custom field's key
}
# habla stage -> stage_id ("": Pipedrive's default on creation, unchanged on update)
STAGES: Mapping[str, str] = {"open": "", "won": "", "lost": ""}
STATUSES = {"won": "won", "lost": "lost"}  # any other habla stage is "open"
LISTS = {"phone": "phones", "email": "emails"}  # in a search hit and a v2 person
# top-level fields of a v2 person / deal body; any other extra key is a custom field
PERSON_BODY = {"name", "owner_id", "org_id", "visible_to", "label_ids", "marketing_status"}
DEAL_BODY = {
    "title",
    "owner_id",
    "person_id",
    "org_id",
    "pipeline_id",
    "stage_id",
    "value",
    "currency",
    "status",
    "probability",
    "lost_reason",
    "visible_to",
    "expected_close_date",
    "label_ids",
}
NOTES_PAGE = 500  # notes listed per request (Pipedrive's maximum)
NOTES_PAGES = 20  # pages of a person's notes looked through for the ref marker
_FIELD_KEY = re.compile(r"^[0-9a-f]{40}$")
_API_SUFFIX = re.compile(r"/(api/)?v[12]/?$")


class PipedriveCRM(CRM):
    name: ClassVar[str] = "pipedrive"
    CONTACT_FIELDS: ClassVar[Mapping[str, str]] = CONTACT_FIELDS
    STAGES: ClassVar[Mapping[str, str]] = STAGES
    stage_label: ClassVar[str] = "stage_id"

    @classmethod
    def from_settings(cls, settings: Settings) -> PipedriveCRM:
        c = settings.commerce
        ref, options = cls.settings_options(settings)
        return cls(
            api_token=c.pipedrive_token,
            base_url=c.pipedrive_base_url,
            ref_field=ref or c.pipedrive_ref_field,
            **options,
        )

    def __init__(
        self,
        api_token: str,
        base_url: str = BASE_URL,
        ref_field: str = "",
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10.0,
        stage_map: Mapping[str, str] | None = None,
        contact_fields: Mapping[str, str] | None = None,
    ) -> None:
        """``base_url``: https://api.pipedrive.com or the company domain. ``ref_field``:
        the API key of the deal custom field that holds habla's reference. Without a
        ``session`` the adapter opens (and closes) its own."""
        problems = []
        if not api_token:
            problems.append("api_token is required")
        if not _FIELD_KEY.match(ref_field):
            problems.append(
                f"ref_field {ref_field!r} must be the API key (40 hex characters) of a deal "
                "custom field"
            )
        if not re.match(r"^https?://[^/]", base_url or ""):
            problems.append(f"base_url {base_url!r} is not an http(s) URL")
        bad = {k: v for k, v in (stage_map or {}).items() if v and not v.isdigit()}
        if bad:
            problems.append(f"stage_map values must be stage ids (numbers): {bad}")
        super().__init__(
            timeout_s=timeout_s,
            max_workers=1,  # no SDK: nothing runs on the thread pool
            stage_map=stage_map,
            contact_fields=contact_fields,
            problems=problems,
        )
        self._headers = {"x-api-token": api_token, "Accept": "application/json"}
        self.base_url = _API_SUFFIX.sub("", base_url.rstrip("/"))
        self.ref_field = ref_field
        self.session = session
        self._own_session = session is None

    async def start(self) -> None:
        if self.session is None:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s + SDK_GRACE_S)
            self.session = aiohttp.ClientSession(timeout=timeout)

    async def close(self) -> None:
        await super().close()
        if self._own_session and self.session is not None:
            session, self.session = self.session, None
            await session.close()

    # ------------------------------------------------------------------ CRM

    async def create_lead(self, contact: Contact, source: str, ref: str) -> str:
        person_id = _int_id(await self.upsert_contact(contact), "person")
        name = " ".join(p for p in (contact.first_name, contact.last_name) if p)
        name = name or contact.phone or contact.email
        body = {
            "title": f"{name} ({source})" if source else name,
            "person_id": person_id,
            self.ref_field: ref,
        }
        found = await self._find_by_ref("/api/v1/leads/search", ref)
        if found:
            await self._request("PATCH", f"/api/v1/leads/{found}", json=body)
            return found
        return await self._create("/api/v1/leads", body)

    async def upsert_deal(self, deal: Deal) -> str:
        body: dict[str, Any] = {
            "title": deal.name,
            "value": round(deal.amount, minor_units(deal.currency)),
            "currency": deal.currency.upper(),
            **self._stage_fields(deal.stage),
        }
        if deal.contact_id:
            body["person_id"] = _int_id(deal.contact_id, "person")
        custom = {self.ref_field: deal.ref}
        for key, value in deal.extra.items():
            (body if key in DEAL_BODY else custom)[key] = value
        body["custom_fields"] = custom
        found = await self._find_by_ref("/api/v2/deals/search", deal.ref)
        if found:
            await self._request("PATCH", f"/api/v2/deals/{found}", json=body)
            return found
        return await self._create("/api/v2/deals", body)

    async def move_deal(self, ref: str, stage: str) -> str:
        fields = self._stage_fields(stage)
        deal_id = await self._require_deal(ref)
        await self._request("PATCH", f"/api/v2/deals/{deal_id}", json=fields)
        return deal_id

    async def add_note(self, contact_id: str, text: str, ref: str, deal_ref: str = "") -> str:
        person_id = _int_id(contact_id, "person")
        body: dict[str, Any] = {"content": _note_content(text, ref), "person_id": person_id}
        if deal_ref:
            body["deal_id"] = int(await self._require_deal(deal_ref))
        found = await self._find_note(person_id, ref)
        if found:
            await self._request("PUT", f"/api/v1/notes/{found}", json=body)
            return found
        return await self._create("/api/v1/notes", body)

    def _stage_fields(self, habla_stage: str) -> dict[str, Any]:
        """The deal's ``status`` and, when mapped, ``stage_id`` for a habla stage."""
        stage_id = self.stage(habla_stage)
        fields: dict[str, Any] = {"status": STATUSES.get(habla_stage, "open")}
        if stage_id:
            fields["stage_id"] = int(stage_id)
        return fields

    # ------------------------------------------------------------------ contacts

    async def _find_contacts(
        self, wanted: Sequence[tuple[str, str]]
    ) -> list[tuple[str, Mapping[str, Any]]]:
        found: dict[str, dict[str, Any]] = {}
        for field, value in wanted:
            params = {
                "term": value,
                "fields": field if field in LISTS else "custom_fields",
                "exact_match": "true",
                "limit": "10",
            }
            answer = await self._request("GET", "/api/v2/persons/search", params=params)
            for item in _search_items(answer):
                values = found.setdefault(str(item["id"]), {})
                values.update({f: v for f, v in wanted if _holds(item, f, v)})
        return list(found.items())

    def _contact_record(self, contact: Contact, *, creating: bool) -> dict[str, Any]:
        """The person's fields by their mapped names ("phone", "email", "name", custom
        keys); :meth:`_person_body` turns them into the API's body."""
        record: dict[str, Any] = {}
        names: dict[str, str] = {}
        for habla_field, target in self.contact_fields.items():
            value = getattr(contact, habla_field)
            if not (value and target):
                continue
            if target in ("first_name", "last_name"):
                names[target] = value
            else:
                record[target] = value
        name = " ".join(n for n in (names.get("first_name"), names.get("last_name")) if n)
        if name or creating:
            record["name"] = name or contact.phone or contact.email
        record.update(contact.extra)
        return record

    async def _create_contact(self, fields: Mapping[str, Any]) -> str:
        return await self._create("/api/v2/persons", self._person_body(fields, {}))

    async def _update_contact(self, contact_id: str, fields: Mapping[str, Any]) -> None:
        current: Mapping[str, Any] = {}
        if any(fields.get(f) for f in ("phone", "email")):  # added to the person's lists
            current = (await self._request("GET", f"/api/v2/persons/{contact_id}"))["data"]
        body = self._person_body(fields, current)
        if body:
            await self._request("PATCH", f"/api/v2/persons/{contact_id}", json=body)

    def _person_body(self, fields: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
        """A v2 person body: the phone and e-mail added to the ``current`` lists (not
        sent when already there), custom fields under ``custom_fields``."""
        body: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        for key, value in fields.items():
            if key in ("phone", "email"):
                listed = list(current.get(LISTS[key]) or [])
                if not any(_same(key, entry.get("value", ""), value) for entry in listed):
                    label = "mobile" if key == "phone" else "work"
                    new = {"value": value, "primary": not listed, "label": label}
                    body[LISTS[key]] = [*listed, new]
            elif key in PERSON_BODY:
                body[key] = value
            else:
                custom[key] = value
        if custom:
            body["custom_fields"] = custom
        return body

    # ------------------------------------------------------------------ requests

    async def _find_by_ref(self, search_path: str, ref: str) -> str:
        """The id of the deal or lead whose custom field values include ``ref``."""
        params = {"term": ref, "fields": "custom_fields", "exact_match": "true", "limit": "10"}
        answer = await self._request("GET", search_path, params=params)
        for item in _search_items(answer):
            if ref in (item.get("custom_fields") or []):
                return str(item["id"])
        return ""

    async def _require_deal(self, ref: str) -> str:
        deal_id = await self._find_by_ref("/api/v2/deals/search", ref)
        if not deal_id:
            raise TransientError(f"pipedrive: no deal with {self.ref_field}={ref!r} (yet)")
        return deal_id

    async def _find_note(self, person_id: int, ref: str) -> str:
        marker = _marker(ref)
        start = 0
        for _ in range(NOTES_PAGES):
            params = {"person_id": str(person_id), "start": str(start), "limit": str(NOTES_PAGE)}
            answer = await self._request("GET", "/api/v1/notes", params=params)
            for note in answer.get("data") or []:
                if marker in str(note.get("content") or ""):
                    return str(note["id"])
            page = (answer.get("additional_data") or {}).get("pagination") or {}
            if not page.get("more_items_in_collection"):
                break
            start = int(page.get("next_start", start + NOTES_PAGE))
        return ""

    async def _create(self, path: str, body: Mapping[str, Any]) -> str:
        answer = await self._request("POST", path, json=body)
        return str(answer["data"]["id"])

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> dict[str, Any]:
        """One API request, bounded by ``timeout_s``, its errors mapped; the answer
        (``{"success": true, "data": ..., "additional_data": ...}``)."""
        try:
            return await asyncio.wait_for(self._send(method, path, params, json), self.timeout_s)
        except asyncio.TimeoutError as e:
            raise TransientError(f"{self.name}: no answer in {self.timeout_s:g} s") from e
        except HablaError:
            raise
        except aiohttp.ClientConnectorCertificateError as e:
            raise PermanentError(f"{self.name}: {type(e).__name__}: {e}") from e
        except (aiohttp.ClientError, OSError) as e:
            raise classify(e, self.name) from e

    async def _send(
        self, method: str, path: str, params: Mapping[str, str] | None, json: Any
    ) -> dict[str, Any]:
        await self.start()
        assert self.session is not None
        async with self.session.request(
            method, self.base_url + path, params=params, json=json, headers=self._headers
        ) as resp:
            try:
                answer = await resp.json(content_type=None)
            except ValueError:
                answer = None
            if resp.status >= 400:
                raise api_error(resp.status, answer, resp.headers)
            if not (isinstance(answer, dict) and answer.get("success")):
                raise PermanentError(f"pipedrive {resp.status}: unexpected answer to {path}")
            return answer


def api_error(status: int, answer: Any, headers: Mapping[str, str]) -> HablaError:
    """By HTTP status (408, 429, 5xx transient); the wait of a 429 from ``Retry-After``,
    else ``x-ratelimit-reset`` (seconds until the window resets)."""
    message = ""
    if isinstance(answer, dict):
        code = answer.get("errorCode") or answer.get("code") or ""
        message = f"{answer.get('error') or ''} {code if code != status else ''}".strip()
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if retry_after is None and status == 429:
        retry_after = parse_retry_after(headers.get("x-ratelimit-reset"))
    return error_for_status(status, f"pipedrive {status}: {message}".strip(), retry_after)


def _search_items(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The records of a search answer (``data.items[].item``)."""
    data = answer.get("data") or {}
    return [hit["item"] for hit in data.get("items") or [] if isinstance(hit.get("item"), dict)]


def _holds(item: Mapping[str, Any], field: str, value: str) -> bool:
    """Whether the search hit has ``value`` in ``field`` (phones, emails or a custom field)."""
    values: Iterable[Any] = item.get(LISTS.get(field, "custom_fields")) or []
    return any(_same(field, str(v), value) for v in values)


def _same(field: str, a: str, b: str) -> bool:
    """Equal e-mails (any case), phones (digits) or values."""
    if field == "phone":
        return _digits(a) == _digits(b) != ""
    return a.strip().lower() == b.strip().lower()


def _digits(phone: str) -> str:
    return "".join(c for c in phone if c.isdigit())


def _int_id(value: str, kind: str) -> int:
    """A Pipedrive id (an integer) given as a string."""
    if not str(value).isdigit():
        raise PermanentError(f"pipedrive: {value!r} is not a {kind} id")
    return int(value)


def _marker(ref: str) -> str:
    return f"[habla-ref: {html.escape(ref)}]"


def _note_content(text: str, ref: str) -> str:
    """Plain text as the HTML a note renders (escaped, line breaks kept), then the ref."""
    return html.escape(text).replace("\n", "<br>") + f"<br><br>{_marker(ref)}"
