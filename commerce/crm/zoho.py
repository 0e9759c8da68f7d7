"""Zoho CRM through its REST API v6 (``/crm/v6``), with ``requests`` on the base's pool.

* OAuth: a refresh token (a Self Client's, or any client's with offline access) is
  exchanged at the accounts server (``POST {accounts}/oauth/v2/token``,
  ``grant_type=refresh_token``, the secrets in the form body, never in a URL or a log)
  for an access token (its ``api_domain`` is not followed: the configured one is),
  kept until ``REFRESH_MARGIN_S`` before its ``expires_in`` and fetched once for every
  caller waiting on it (single-flight). A 401 ``INVALID_TOKEN`` (expired early,
  revoked) fetches a new one and sends the request once more. A refusal of the refresh
  token itself (``invalid_code``, ``invalid_client``: revoked or wrong credentials) is
  a :class:`PermanentError`: the outbox records the write as failed.
* The data centre (``dc``: com, eu, in, com.au, jp, ca, com.cn, sa, uk) chooses
  ``https://www.zohoapis.{dc}`` and its accounts server; ``api_base`` and
  ``accounts_url`` override them (tests, a sandbox: ``https://sandbox.zohoapis.com``).
* Contacts are found with the search API by phone, then e-mail
  (``GET /Contacts/search?criteria=((Phone:equals:…)or(Email:equals:…))``; 204 is
  none), then updated (``PUT /Contacts/{id}``) or created (``POST /Contacts``). A
  creation refused as ``DUPLICATE_DATA`` (the org made e-mail unique, and search has
  not seen the record yet) updates the record Zoho names instead.
* Leads and deals are written with ``POST /{module}/upsert`` and
  ``duplicate_check_fields=[ref_field]`` (default ``Habla_Ref``): one atomic, idempotent
  write by habla's reference. A deal is looked up by ``ref_field`` first, so that only
  its creation sets ``Closing_Date`` (today + 30 days; mandatory in Zoho's standard
  layout); ``Stage`` comes from :meth:`CRM.stage`.
* Notes cannot carry custom fields nor be upserted in Zoho: a note's reference is kept
  at the end of its title (``Conversation [ref]``) and looked up among the parent's
  notes (``GET /{module}/{id}/Notes``), then updated or created (``Parent_Id`` with
  its module). A note has one parent: the deal stored under ``deal_ref`` when given and
  its ``Contact_Name`` is the contact (the note shows on the contact through the deal),
  the contact otherwise. A deal not stored (yet) raises :class:`TransientError`.
* Zoho's answers are mapped once (:func:`api_error`): by each record's ``code`` in
  ``data[]`` or the answer's own ``code`` (``LIMIT_EXCEEDED``, ``TOO_MANY_REQUESTS``,
  ``INTERNAL_ERROR`` transient; ``MANDATORY_NOT_FOUND``, ``INVALID_DATA`` and the rest
  permanent), then by HTTP status (408, 429, 5xx transient).

What the org needs: a single-line text field ``ref_field`` on Leads and Deals with
"Do not allow duplicate values" ticked (the upsert's duplicate check); ``stage_map``
values among the Deals ``Stage`` picklist; ``multi_currency=True`` only in a
multi-currency org (it sends ``Currency``); an OAuth client with the scopes
``ZohoCRM.modules.ALL`` (or contacts, leads, deals and notes ``.ALL``) and
``ZohoSearch.securesearch.READ``.

``requests`` is synchronous: every HTTP call runs through :meth:`CRM.call`, on the
base's thread pool, bounded by ``timeout_s`` (``send.timeout_s``), with the socket
timeout just above it; errors are mapped by :meth:`map_error`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, ClassVar

import requests

from commerce.catalog import minor_units
from commerce.crm.base import CRM, Contact, Deal
from runtime.errors import HablaError, PermanentError, TransientError, error_for_status
from runtime.settings import Settings

API_VERSION = "v6"
# data centre -> (API base, accounts server)
DATA_CENTRES: Mapping[str, tuple[str, str]] = {
    "com": ("https://www.zohoapis.com", "https://accounts.zoho.com"),
    "eu": ("https://www.zohoapis.eu", "https://accounts.zoho.eu"),
    "in": ("https://www.zohoapis.in", "https://accounts.zoho.in"),
    "com.au": ("https://www.zohoapis.com.au", "https://accounts.zoho.com.au"),
    "jp": ("https://www.zohoapis.jp", "https://accounts.zoho.jp"),
    "ca": ("https://www.zohoapis.ca", "https://accounts.zohocloud.ca"),
    "com.cn": ("https://www.zohoapis.com.cn", "https://accounts.zoho.com.cn"),
    "sa": ("https://www.zohoapis.sa", "https://accounts.zoho.sa"),
    "uk": ("https://www.zohoapis.uk", "https://accounts.zoho.uk"),
}
# habla field -> Contacts field ("" for none: Zoho's standard Contacts have no language)
CONTACT_FIELDS: Mapping[str, str] = {
    "phone": "Phone",
    "email": "Email",
    "first_name": "First_Name",
    "last_name": "Last_Name",
    "language": "",
}
# habla stage -> Deals Stage (the standard picklist)
STAGES: Mapping[str, str] = {"open": "Qualification", "won": "Closed Won", "lost": "Closed Lost"}
REF_FIELD = "Habla_Ref"
# codes worth retrying whatever the HTTP status
TRANSIENT_CODES = frozenset({"LIMIT_EXCEEDED", "TOO_MANY_REQUESTS", "INTERNAL_ERROR"})
REFRESH_MARGIN_S = 60.0  # an access token is renewed this long before it expires
CLOSE_IN_DAYS = 30
NOTES_PER_PAGE = 200


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float  # _clock(): REFRESH_MARGIN_S (at most half its life) before it expires


def _clock() -> float:
    return time.monotonic()


class DuplicateRecord(PermanentError):
    """Zoho refused a creation (``DUPLICATE_DATA``): the id of the record it matched."""

    def __init__(self, reason: str, existing_id: str) -> None:
        super().__init__(reason)
        self.existing_id = existing_id


class ZohoCRM(CRM):
    name: ClassVar[str] = "zoho"
    CONTACT_FIELDS: ClassVar[Mapping[str, str]] = CONTACT_FIELDS
    STAGES: ClassVar[Mapping[str, str]] = STAGES
    stage_label: ClassVar[str] = "Stage"

    @classmethod
    def from_settings(cls, settings: Settings) -> ZohoCRM:
        c = settings.commerce
        ref, options = cls.settings_options(settings)
        return cls(
            client_id=c.zoho_client_id,
            client_secret=c.zoho_client_secret,
            refresh_token=c.zoho_refresh_token,
            dc=c.zoho_dc,
            api_base=c.zoho_api_base,
            accounts_url=c.zoho_accounts_url,
            ref_field=ref or c.zoho_ref_field,
            **options,
        )

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        *,
        dc: str = "com",
        api_base: str = "",
        accounts_url: str = "",
        session: requests.Session | None = None,
        timeout_s: float = 10.0,
        contact_fields: Mapping[str, str] | None = None,
        stage_map: Mapping[str, str] | None = None,
        ref_field: str = REF_FIELD,
        multi_currency: bool = False,
        note_title: str = "Conversation",
        max_workers: int = 4,
    ) -> None:
        """``api_base`` and ``accounts_url`` "" are the data centre's. Without a
        ``session`` the adapter opens (and closes) its own, which ignores proxy settings
        from the environment."""
        problems = [
            f"{name} is required"
            for name, value in (
                ("client_id", client_id),
                ("client_secret", client_secret),
                ("refresh_token", refresh_token),
            )
            if not value
        ]
        if dc not in DATA_CENTRES and not (api_base and accounts_url):
            problems.append(f"dc {dc!r} is not one of {', '.join(DATA_CENTRES)}")
        if not ref_field:
            problems.append("ref_field must name a unique text field")
        super().__init__(
            timeout_s=timeout_s,
            max_workers=max_workers,
            stage_map=stage_map,
            contact_fields=contact_fields,
            problems=problems,
        )
        default_api, default_accounts = DATA_CENTRES.get(dc, ("", ""))
        self.api_url = f"{(api_base or default_api).rstrip('/')}/crm/{API_VERSION}"
        self.token_url = f"{(accounts_url or default_accounts).rstrip('/')}/oauth/v2/token"
        self._grant = {
            "grant_type": "refresh_token",
            "client_id": client_id,
            "client_secret": client_secret,
            "refresh_token": refresh_token,
        }
        self._own_session = session is None
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no proxy or netrc surprises: the configured hosts only
        self.session = session
        self.ref_field = ref_field
        self.multi_currency = multi_currency
        self.note_title = note_title
        self._token: _Token | None = None
        self._refreshing = asyncio.Lock()

    def __repr__(self) -> str:  # no secrets in logs or tracebacks
        return f"ZohoCRM(api_url={self.api_url!r}, token_url={self.token_url!r})"

    async def close(self) -> None:
        await super().close()
        if self._own_session:
            self.session.close()

    def map_error(self, error: Exception) -> HablaError | None:
        if isinstance(error, requests.RequestException):
            return network_error(error)
        return None

    # ------------------------------------------------------------------ CRM

    async def create_lead(self, contact: Contact, source: str, ref: str) -> str:
        fields = self._person_fields(contact, creating=True)
        if source:
            fields["Description"] = f"habla: {source}"
        return await self._upsert("Leads", ref, fields)

    async def upsert_deal(self, deal: Deal) -> str:
        fields: dict[str, Any] = {
            "Deal_Name": deal.name,
            "Amount": round(deal.amount, minor_units(deal.currency)),
            "Stage": self.stage(deal.stage),
        }
        if self.multi_currency:
            fields["Currency"] = deal.currency.upper()
        if deal.contact_id:
            fields["Contact_Name"] = {"id": deal.contact_id}
        fields.update(deal.extra)
        if not await self._find_deal(deal.ref):  # only a creation sets the closing date
            fields["Closing_Date"] = (date.today() + timedelta(days=CLOSE_IN_DAYS)).isoformat()
        return await self._upsert("Deals", deal.ref, fields)

    async def move_deal(self, ref: str, stage: str) -> str:
        fields = {"Stage": self.stage(stage)}
        deal_id = str((await self._require_deal(ref))["id"])
        await self._write("PUT", f"/Deals/{deal_id}", fields)
        return deal_id

    async def add_note(self, contact_id: str, text: str, ref: str, deal_ref: str = "") -> str:
        module, parent_id = "Contacts", contact_id
        if deal_ref:
            deal = await self._require_deal(deal_ref)
            if _lookup_id(deal.get("Contact_Name")) == contact_id:
                module, parent_id = "Deals", str(deal["id"])
        title = f"{self.note_title} [{ref}]"
        _, notes = await self._request(
            "GET",
            f"/{module}/{parent_id}/Notes",
            params={"fields": "Note_Title", "per_page": NOTES_PER_PAGE},
        )
        found = next((str(n["id"]) for n in _records(notes) if n.get("Note_Title") == title), "")
        if found:
            await self._write("PUT", f"/Notes/{found}", {"Note_Title": title, "Note_Content": text})
            return found
        parent = {"module": {"api_name": module}, "id": parent_id}
        record = {"Note_Title": title, "Note_Content": text, "Parent_Id": parent}
        return await self._write("POST", "/Notes", record)

    # ------------------------------------------------------------------ contacts

    async def _find_contacts(
        self, wanted: Sequence[tuple[str, str]]
    ) -> list[tuple[str, Mapping[str, Any]]]:
        return [(str(r["id"]), r) for r in await self._search("Contacts", wanted, per_page=10)]

    def _contact_record(self, contact: Contact, *, creating: bool) -> dict[str, Any]:
        fields = self._person_fields(contact, creating=creating)
        fields.update(contact.extra)
        return fields

    async def _create_contact(self, fields: Mapping[str, Any]) -> str:
        try:
            return await self._write("POST", "/Contacts", fields)
        except DuplicateRecord as e:  # created meanwhile, not searchable yet
            await self._update_contact(e.existing_id, fields)
            return e.existing_id

    async def _update_contact(self, contact_id: str, fields: Mapping[str, Any]) -> None:
        await self._write("PUT", f"/Contacts/{contact_id}", fields)

    def _person_fields(self, contact: Contact, *, creating: bool) -> dict[str, Any]:
        """The contact's mapped fields. Last_Name is mandatory on Contacts and Leads:
        without a last name, the first name (else the phone or e-mail) stands in for it
        on creation, and an update leaves the names alone."""
        skip = {"first_name"} if not contact.last_name else set()
        fields = self.mapped_fields(contact, skip)
        if creating and not contact.last_name:
            last = self.contact_fields["last_name"] or "Last_Name"
            fields[last] = contact.first_name or contact.phone or contact.email
        return fields

    # ------------------------------------------------------------------ requests

    async def _search(
        self, module: str, wanted: Sequence[tuple[str, str]], per_page: int
    ) -> list[dict[str, Any]]:
        """Records of ``module`` where any ``field == value`` (one criteria, OR'ed)."""
        terms = [f"({f}:equals:{_escape(v)})" for f, v in wanted]
        criteria = f"({'or'.join(terms)})" if len(terms) > 1 else terms[0]
        status, body = await self._request(
            "GET", f"/{module}/search", params={"criteria": criteria, "per_page": per_page}
        )
        return [] if status == 204 else _records(body)

    async def _find_deal(self, ref: str) -> dict[str, Any] | None:
        found = await self._search("Deals", [(self.ref_field, ref)], per_page=1)
        return found[0] if found else None

    async def _require_deal(self, ref: str) -> dict[str, Any]:
        deal = await self._find_deal(ref)
        if deal is None:
            raise TransientError(f"zoho: no deal with {self.ref_field}={ref!r} (yet)")
        return deal

    async def _upsert(self, module: str, ref: str, fields: Mapping[str, Any]) -> str:
        """Create or update the ``module`` record stored under ``ref``. Its id."""
        body = {
            "data": [{**fields, self.ref_field: ref}],
            "duplicate_check_fields": [self.ref_field],
        }
        _, answer = await self._request("POST", f"/{module}/upsert", json=body)
        return _record_id(answer)

    async def _write(self, method: str, path: str, fields: Mapping[str, Any]) -> str:
        """One record to insert (POST) or update (PUT). Its id."""
        _, answer = await self._request(method, path, json={"data": [dict(fields)]})
        return _record_id(answer)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> tuple[int, Any]:
        """One API call, with a valid access token; a 401 ``INVALID_TOKEN`` renews the
        token and sends the call once more. Status and JSON body; errors raised."""
        url = self.api_url + path
        token = await self._access_token()
        status, body, retry_after = await self.call(self._send, method, url, token, params, json)
        if status == 401 and _code(body) == "INVALID_TOKEN":
            token = await self._access_token(stale=token)
            status, body, retry_after = await self.call(
                self._send, method, url, token, params, json
            )
        if status >= 400:
            raise api_error(status, body, retry_after)
        return status, body

    def _send(
        self, method: str, url: str, token: str, params: Any, json: Any
    ) -> tuple[int, Any, str | None]:
        response = self.session.request(
            method,
            url,
            params=params,
            json=json,
            headers={"Authorization": f"Zoho-oauthtoken {token}"},
            timeout=self.sdk_timeout_s,
        )
        return response.status_code, _json(response), response.headers.get("Retry-After")

    # ------------------------------------------------------------------ OAuth

    async def _access_token(self, stale: str = "") -> str:
        """The cached access token, renewed when it is about to expire or is ``stale``
        (refused by the API); one renewal at a time, shared by everyone waiting."""
        async with self._refreshing:
            token = self._token
            if token is not None and token.value != stale and _clock() < token.renew_at:
                return token.value
            self._token = None
            self._token = await self.call(self._refresh)
            return self._token.value

    def _refresh(self) -> _Token:
        """``grant_type=refresh_token`` at the accounts server (secrets in the body)."""
        started = _clock()
        response = self.session.post(self.token_url, data=self._grant, timeout=self.sdk_timeout_s)
        body = _json(response)
        if not isinstance(body, dict) or "error" in body or response.status_code >= 400:
            raise token_error(response.status_code, body, response.headers.get("Retry-After"))
        if not body.get("access_token"):
            raise PermanentError("zoho: the accounts server answered without an access_token")
        expires_in = float(body.get("expires_in") or 3600)
        margin = min(REFRESH_MARGIN_S, expires_in / 2)
        return _Token(str(body["access_token"]), started + expires_in - margin)


def api_error(status: int, body: Any, retry_after: str | None = None) -> HablaError:
    """A CRM API error: by code (the first failed record's in ``data[]``, else the
    answer's own), then by HTTP status. ``DUPLICATE_DATA`` naming the record it matched
    is :class:`DuplicateRecord`."""
    error = _first_error(body)
    code, message = str(error.get("code", "")), str(error.get("message", ""))
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    field = details.get("api_name") if details else ""
    reason = f"zoho {status} {code}: {message}" + (f" ({field})" if field else "")
    if not code and not message:
        reason = f"zoho {status}: {str(body)[:200]}"
    if code in TRANSIENT_CODES:
        return error_for_status(503, reason, retry_after)
    if code == "DUPLICATE_DATA" and details:
        existing = details.get("duplicate_record") or {}
        if isinstance(existing, dict) and existing.get("id"):
            return DuplicateRecord(reason, str(existing["id"]))
    return error_for_status(status, reason, retry_after)


def token_error(status: int, body: Any, retry_after: str | None = None) -> HablaError:
    """A refused refresh: ``invalid_code`` (the refresh token is revoked or wrong) and
    ``invalid_client`` are permanent; Zoho's throttling of token requests ("Access
    Denied": too many requests) and 429/5xx are transient."""
    data = body if isinstance(body, dict) else {}
    error = str(data.get("error", "")) or f"HTTP {status}"
    detail = str(data.get("error_description", ""))
    reason = f"zoho {status}: token refresh refused: {error}" + (f" ({detail})" if detail else "")
    if error == "invalid_code":
        reason += ": the refresh token is revoked or wrong (ZOHO_REFRESH_TOKEN)"
    if status == 429 or status >= 500:
        return error_for_status(status, reason, retry_after)
    if "too many requests" in detail.lower() or error == "Access Denied":
        return TransientError(reason)
    return PermanentError(reason)


def network_error(e: requests.RequestException) -> HablaError:
    """Timeouts and connection errors are transient; an untrusted certificate or a bad
    URL is permanent. The URL carries no secret (they travel in headers and bodies)."""
    reason = f"zoho: {type(e).__name__}: {e}"
    if isinstance(e, requests.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(e):
        return PermanentError(reason)
    if isinstance(
        e, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    ):
        return TransientError(reason)
    return PermanentError(reason)


def _json(response: requests.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text[:200]


def _records(body: Any) -> list[dict[str, Any]]:
    data = body.get("data") if isinstance(body, dict) else None
    return [r for r in data or [] if isinstance(r, dict)]


def _code(body: Any) -> str:
    return str(body.get("code", "")) if isinstance(body, dict) else ""


def _first_error(body: Any) -> dict[str, Any]:
    """The first record in ``data[]`` that failed, else the answer itself."""
    for record in _records(body):
        if record.get("status") != "success":
            return record
    return body if isinstance(body, dict) else {}


def _record_id(body: Any) -> str:
    """The id of the one record written (``data[0].details.id``); a record that failed
    inside a 2xx answer raises its error."""
    records = _records(body)
    if not records:
        raise PermanentError(f"zoho: unexpected answer {str(body)[:200]}")
    record = records[0]
    if record.get("status") != "success":
        raise api_error(200, body)
    details = record.get("details") or {}
    return str(details["id"])


def _lookup_id(value: Any) -> str:
    """A lookup field's record id (``{"name": ..., "id": ...}``), '' for none."""
    return str(value.get("id") or "") if isinstance(value, dict) else ""


def _escape(value: str) -> str:
    """A search criteria value: backslash, parentheses and commas escaped."""
    for char in ("\\", "(", ")", ","):
        value = value.replace(char, "\\" + char)
    return value
