"""A local fake of Zoho: the accounts server's token endpoint and the CRM REST API v6.

It serves what :class:`commerce.crm.zoho.ZohoCRM` calls, on one port:

* ``POST /oauth/v2/token``  ``grant_type=refresh_token`` with ``client_id``,
  ``client_secret`` and ``refresh_token`` (query string or form body, as Zoho takes
  them): ``{"access_token", "api_domain", "token_type", "expires_in"}``; a wrong or
  revoked refresh token is ``{"error": "invalid_code"}`` and a wrong client
  ``{"error": "invalid_client"}``, both with HTTP 200, as Zoho answers them;
* ``GET  /crm/v6/{module}/search?criteria=((F:equals:V)or(G:equals:W))`` (``equals``
  only, values escaped with backslashes; 204 with an empty body when nothing matches);
* ``POST /crm/v6/{module}`` (insert), ``PUT /crm/v6/{module}/{id}`` (update),
  ``POST /crm/v6/{module}/upsert`` (``duplicate_check_fields``);
* ``GET  /crm/v6/{module}/{id}/Notes?fields=...`` (a record's notes);

for ``Contacts``, ``Leads``, ``Deals`` and ``Notes``. API calls need
``Authorization: Zoho-oauthtoken <token>`` with a token it issued and has not expired
(else 401 ``INVALID_TOKEN``). Records are checked (known fields only, mandatory fields
of the standard layouts, e-mail syntax, numbers, dates, the ``Stage`` picklist, the
org's currencies, lookups and a note's ``Parent_Id`` pointing at existing records,
unique fields) and answered per record in ``data[]`` (``code``, ``details``,
``message``, ``status``), as Zoho does: ``SUCCESS``, ``MANDATORY_NOT_FOUND``,
``INVALID_DATA``, ``DUPLICATE_DATA`` (with ``duplicate_record``). Stricter than Zoho:
an unknown field is ``INVALID_DATA`` rather than ignored.

Scriptable: :meth:`fail_next` (status and code, optionally inside ``data[]``),
:meth:`fail_token_next`, :meth:`delay_next`, :meth:`outage`, :meth:`expire_tokens`
(every issued access token stops working), :meth:`revoke` (the refresh token is
refused), ``token_lifetime`` (``expires_in``), :meth:`go_down`/:meth:`come_up`
(closed port, state kept) and ``search_lag`` (new records stay out of search until
:meth:`index`). API requests are recorded in :attr:`requests`, token grants in
:attr:`grants`.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from tests.fakes.server import FakeAPI

BUILTIN_FIELDS: dict[str, set[str]] = {
    "Contacts": {
        "First_Name",
        "Last_Name",
        "Email",
        "Phone",
        "Mobile",
        "Description",
        "Lead_Source",
    },
    "Leads": {
        "First_Name",
        "Last_Name",
        "Email",
        "Phone",
        "Mobile",
        "Company",
        "Description",
        "Lead_Source",
    },
    "Deals": {
        "Deal_Name",
        "Amount",
        "Stage",
        "Closing_Date",
        "Contact_Name",
        "Description",
        "Currency",
        "Lead_Source",
    },
    "Notes": {"Note_Title", "Note_Content", "Parent_Id"},
}
MANDATORY = {
    "Contacts": ("Last_Name",),
    "Leads": ("Last_Name",),
    "Deals": ("Deal_Name", "Stage", "Closing_Date"),
    "Notes": ("Note_Content", "Parent_Id"),
}
STAGES = (
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
    "Closed Lost to Competition",
)
# the org's unique custom field (habla's reference) unless a test says otherwise
DEFAULT_CUSTOM = {"Leads": ["Habla_Ref"], "Deals": ["Habla_Ref"]}
DEFAULT_UNIQUE = {"Leads": ["Habla_Ref"], "Deals": ["Habla_Ref"]}
SYSTEM = {"id", "Created_Time", "Modified_Time", "Owner", "Created_By", "Modified_By"}
OWNER = {"name": "Habla Test", "id": "5725767000000411001", "email": "owner@example.com"}
_DATE = re.compile(r"^\d{4}-\d\d-\d\d$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    authorization: str
    body: Any


class ZohoError(Exception):
    """An answer of the whole request: ``{"code", "details", "message", "status"}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        in_data: bool = False,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or {}
        self.headers = headers
        self.in_data = in_data  # answered as data[0], like a record's error

    def body(self) -> dict[str, Any]:
        error = {
            "code": self.code,
            "details": self.details,
            "message": self.message,
            "status": "error",
        }
        return {"data": [error]} if self.in_data else error


class RecordError(Exception):
    def __init__(self, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.answer = {"code": code, "details": details, "message": message, "status": "error"}


class FakeZohoAPI(FakeAPI):
    def __init__(
        self,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        custom_fields: Mapping[str, Iterable[str]] | None = None,
        unique_fields: Mapping[str, Iterable[str]] | None = None,
        currencies: Iterable[str] = ("EUR", "USD", "GBP"),
        multi_currency: bool = False,
    ) -> None:
        super().__init__()
        self.client_id, self.client_secret = client_id, client_secret
        self.refresh_token = refresh_token
        custom = DEFAULT_CUSTOM if custom_fields is None else custom_fields
        self.fields = {m: f | set(custom.get(m, ())) for m, f in BUILTIN_FIELDS.items()}
        unique = DEFAULT_UNIQUE if unique_fields is None else unique_fields
        self.unique = {m: set(unique.get(m, ())) for m in BUILTIN_FIELDS}
        self.currencies = set(currencies)
        self.multi_currency = multi_currency
        if not multi_currency:
            self.fields["Deals"].discard("Currency")
        self.records: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in BUILTIN_FIELDS}
        self.requests: list[Recorded] = []
        self.grants: list[dict[str, str]] = []
        self.issued: dict[str, float] = {}  # access token -> time.monotonic() it expires
        self.token_lifetime = 3600
        self.revoked = False
        self.search_lag = False
        self.unindexed: set[str] = set()
        self._failures: list[ZohoError] = []
        self._token_failures: list[tuple[int, dict[str, Any]]] = []
        self._ids = itertools.count(5725767000001001)

    # ---------------------------------------------------------------- control

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        code: str = "",
        message: str = "",
        retry_after: float | None = None,
        in_data: bool = False,
    ) -> None:
        """Answer the next ``n`` API requests with ``status`` and ``code`` (429:
        ``TOO_MANY_REQUESTS``, 5xx: ``INTERNAL_ERROR`` by default); ``in_data``: as
        the first record's error in ``data[]``."""
        default = {429: "TOO_MANY_REQUESTS", 401: "INVALID_TOKEN"}.get(status, "INVALID_REQUEST")
        if status >= 500:
            default = "INTERNAL_ERROR"
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        error = ZohoError(
            status,
            code or default,
            message or code.lower().replace("_", " ") or "internal server error",
            headers=headers,
            in_data=in_data,
        )
        self._failures.extend([error] * n)

    def fail_token_next(
        self, n: int = 1, status: int = 503, error: str = "server_error", description: str = ""
    ) -> None:
        """Answer the next ``n`` token requests with ``status`` and ``error``; Zoho's
        throttling of token requests is ``status=400, error="Access Denied"`` with
        ``description="You have made too many requests continuously..."``."""
        answer: dict[str, Any] = {"error": error}
        if description:
            answer |= {"error_description": description, "status": "failure"}
        self._token_failures.extend([(status, answer)] * n)

    def expire_tokens(self) -> None:
        """Every access token issued so far stops working (401 ``INVALID_TOKEN``)."""
        self.issued = dict.fromkeys(self.issued, 0.0)

    def revoke(self) -> None:
        """The refresh token is revoked: grants get ``invalid_code``, tokens stop."""
        self.revoked = True
        self.expire_tokens()

    def index(self) -> None:
        """Let search see every record (the end of the ``search_lag`` window)."""
        self.unindexed.clear()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth/v2/token", self.token)
        app.router.add_get("/crm/v6/{module}/search", self.search)
        app.router.add_post("/crm/v6/{module}/upsert", self.upsert)
        app.router.add_get("/crm/v6/{module}/{id}/Notes", self.notes)
        app.router.add_post("/crm/v6/{module}", self.insert)
        app.router.add_put("/crm/v6/{module}/{id}", self.update)
        return app

    # ---------------------------------------------------------------- views

    def objects(self, module: str) -> list[dict[str, Any]]:
        return list(self.records[module].values())

    def sent(self, method: str, path_prefix: str) -> list[Any]:
        """Bodies of recorded API requests with this method whose path starts so."""
        return [
            r.body for r in self.requests if r.method == method and r.path.startswith(path_prefix)
        ]

    # ---------------------------------------------------------------- accounts

    async def token(self, request: web.Request) -> web.Response:
        form = dict(request.query) | dict(await request.post())
        self.grants.append({k: str(v) for k, v in form.items()})
        if self._token_failures:
            status, answer = self._token_failures.pop(0)
            return web.json_response(answer, status=status)
        if form.get("grant_type") != "refresh_token":
            return web.json_response({"error": "unsupported_grant_type"})
        if form.get("client_id") != self.client_id or form.get("client_secret") != (
            self.client_secret
        ):
            return web.json_response({"error": "invalid_client"})
        if self.revoked or form.get("refresh_token") != self.refresh_token:
            return web.json_response({"error": "invalid_code"})
        access = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        self.issued[access] = time.monotonic() + self.token_lifetime
        return web.json_response(
            {
                "access_token": access,
                "scope": "ZohoCRM.modules.ALL ZohoSearch.securesearch.READ",
                "api_domain": self.url,
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
            }
        )

    # ---------------------------------------------------------------- CRM

    async def _begin(self, request: web.Request) -> Any:
        """Record the request, apply scripted delays/failures and check auth; the body."""
        body = await self.read_json(request)
        authorization = request.headers.get("Authorization", "")
        self.requests.append(
            Recorded(request.method, request.path, dict(request.query), authorization, body)
        )
        await self.hold()
        if self._failures:
            raise self._failures.pop(0)
        if self.down.refuses():
            code = "TOO_MANY_REQUESTS" if self.down.status == 429 else "INTERNAL_ERROR"
            raise ZohoError(self.down.status, code, "service unavailable")
        scheme, _, token = authorization.partition(" ")
        if scheme != "Zoho-oauthtoken" or not token:
            raise ZohoError(401, "AUTHENTICATION_FAILURE", "Authentication failed")
        if self.issued.get(token, 0.0) <= time.monotonic():
            raise ZohoError(401, "INVALID_TOKEN", "invalid oauth token")
        module = request.match_info["module"]
        if module not in self.records:
            raise ZohoError(
                400,
                "INVALID_MODULE",
                "the module name given seems to be invalid",
                {"resource_path_index": 0},
            )
        if request.method in ("POST", "PUT"):
            if request.content_type != "application/json" or not isinstance(body, dict):
                raise ZohoError(400, "INVALID_DATA", "body must be a JSON object")
            data = body.get("data")
            if not isinstance(data, list) or not data or len(data) > 100:
                raise ZohoError(
                    400,
                    "INVALID_DATA",
                    "data must be a list of 1 to 100 records",
                    {"api_name": "data"},
                )
        return body

    async def search(self, request: web.Request) -> web.Response:
        try:
            await self._begin(request)
            module = request.match_info["module"]
            criteria = request.query.get("criteria", "")
            if not criteria:
                raise ZohoError(
                    400,
                    "REQUIRED_PARAM_MISSING",
                    "One of the expected parameter is missing",
                    {"param": "criteria"},
                )
            per_page = _int(request.query.get("per_page", "200"), "per_page")
            if not 1 <= per_page <= 200:
                raise ZohoError(400, "INVALID_DATA", "per_page must be 1 to 200")
            terms, joiner = _parse_criteria(criteria)
            for field, _ in terms:
                if field not in self.fields[module] | {"id"}:
                    raise ZohoError(
                        400, "INVALID_QUERY", "invalid query formed", {"api_name": field}
                    )
            hits = [
                r
                for r in self.records[module].values()
                if r["id"] not in self.unindexed and _matches(r, terms, joiner)
            ]
            if not hits:
                return web.Response(status=204)
            page = hits[:per_page]
            info = {
                "per_page": per_page,
                "count": len(page),
                "page": 1,
                "more_records": len(hits) > per_page,
            }
            return web.json_response({"data": page, "info": info})
        except ZohoError as e:
            return _error(e)

    async def notes(self, request: web.Request) -> web.Response:
        try:
            await self._begin(request)
            module, record_id = request.match_info["module"], request.match_info["id"]
            if record_id not in self.records[module]:
                raise ZohoError(400, "INVALID_DATA", "the related id given seems to be invalid")
            fields = request.query.get("fields", "")
            if not fields:
                raise ZohoError(
                    400,
                    "REQUIRED_PARAM_MISSING",
                    "One of the expected parameter is missing",
                    {"param": "fields"},
                )
            wanted = {f.strip() for f in fields.split(",")}
            unknown = wanted - self.fields["Notes"] - SYSTEM
            if unknown:
                raise ZohoError(
                    400, "INVALID_DATA", "invalid field", {"api_name": sorted(unknown)[0]}
                )
            per_page = _int(request.query.get("per_page", "200"), "per_page")
            related = [
                {k: v for k, v in n.items() if k in wanted | {"id"}}
                for n in self.records["Notes"].values()
                if n["Parent_Id"]["id"] == record_id
            ][:per_page]
            if not related:
                return web.Response(status=204)
            info = {"per_page": per_page, "count": len(related), "page": 1, "more_records": False}
            return web.json_response({"data": related, "info": info})
        except ZohoError as e:
            return _error(e)

    async def insert(self, request: web.Request) -> web.Response:
        try:
            body = await self._begin(request)
            module = request.match_info["module"]
            answers = [self._write(module, record, None) for record in body["data"]]
            return _answer(answers, created=True)
        except ZohoError as e:
            return _error(e)

    async def update(self, request: web.Request) -> web.Response:
        try:
            body = await self._begin(request)
            module, record_id = request.match_info["module"], request.match_info["id"]
            if record_id not in self.records[module]:
                raise ZohoError(
                    400, "INVALID_DATA", "the related id given seems to be invalid", in_data=True
                )
            if len(body["data"]) != 1:
                raise ZohoError(400, "INVALID_DATA", "one record only", {"api_name": "data"})
            return _answer([self._write(module, body["data"][0], record_id)], created=False)
        except ZohoError as e:
            return _error(e)

    async def upsert(self, request: web.Request) -> web.Response:
        try:
            body = await self._begin(request)
            module = request.match_info["module"]
            if module == "Notes":
                raise ZohoError(400, "NOT_SUPPORTED", "upsert is not supported for Notes")
            checks = body.get("duplicate_check_fields") or []
            for field in checks:
                if field not in self.unique[module]:
                    raise ZohoError(
                        400,
                        "INVALID_DATA",
                        "the field is not a unique field",
                        {"api_name": field, "json_path": "$.duplicate_check_fields"},
                    )
            answers = []
            for record in body["data"]:
                existing = ""
                if isinstance(record, dict):
                    existing, _ = self._duplicate(module, record, checks)
                answer = self._write(module, record, existing or None)
                if answer.get("status") == "success":
                    answer["action"] = "update" if existing else "insert"
                    answer["duplicate_field"] = next(
                        (f for f in checks if existing and record.get(f) is not None), None
                    )
                answers.append(answer)
            inserted = any(a.get("action") == "insert" for a in answers)
            return _answer(answers, created=inserted)
        except ZohoError as e:
            return _error(e)

    # ---------------------------------------------------------------- records

    def _write(self, module: str, record: Any, record_id: str | None) -> dict[str, Any]:
        """Insert (``record_id`` None) or update one record; its answer in ``data[]``."""
        try:
            if not isinstance(record, dict):
                raise RecordError(
                    "INVALID_DATA", "invalid data", {"expected_data_type": "jsonobject"}
                )
            values = self._check(module, record, creating=record_id is None)
            existing, field = self._duplicate(module, values, self.unique[module], record_id)
            if existing:
                raise RecordError(
                    "DUPLICATE_DATA",
                    "duplicate data",
                    {
                        "api_name": field,
                        "json_path": f"$.data[0].{field}",
                        "duplicate_record": {
                            "module": {"api_name": module, "id": "5725767000000002175"},
                            "id": existing,
                            "Owner": OWNER,
                        },
                    },
                )
        except RecordError as e:
            return e.answer
        now = _now()
        if record_id is None:
            record_id = str(next(self._ids))
            stored = {"id": record_id, "Owner": OWNER, "Created_Time": now, "Created_By": OWNER}
            self.records[module][record_id] = stored
            if self.search_lag:
                self.unindexed.add(record_id)
            message = "record added"
        else:
            stored = self.records[module][record_id]
            message = "record updated"
        stored.update(values, Modified_Time=now, Modified_By=OWNER)
        details = {
            "Modified_Time": now,
            "Modified_By": OWNER,
            "Created_Time": stored["Created_Time"],
            "id": record_id,
            "Created_By": OWNER,
        }
        return {"code": "SUCCESS", "details": details, "message": message, "status": "success"}

    def _duplicate(
        self, module: str, values: dict[str, Any], fields: Iterable[str], other: str | None = None
    ) -> tuple[str, str]:
        """Another record with the same value in one of ``fields``: its id and the field."""
        for field in fields:
            value = values.get(field)
            if value is None or value == "":
                continue
            for record in self.records[module].values():
                same = str(record.get(field, "")).lower() == str(value).lower()
                if record["id"] != other and same:
                    return str(record["id"]), field
        return "", ""

    def _check(self, module: str, record: dict[str, Any], creating: bool) -> dict[str, Any]:
        values = dict(record)
        for name in values:
            if name not in self.fields[module]:
                raise RecordError("INVALID_DATA", "invalid data", _where(name))
        if creating:
            for name in MANDATORY[module]:
                if values.get(name) in (None, ""):
                    raise RecordError(
                        "MANDATORY_NOT_FOUND", "required field not found", _where(name)
                    )
        for name, value in values.items():
            if problem := self._problem(module, name, value):
                raise RecordError("INVALID_DATA", "invalid data", _where(name) | problem)
        if "Contact_Name" in values and isinstance(values["Contact_Name"], dict):
            contact = self.records["Contacts"][str(values["Contact_Name"]["id"])]
            name = " ".join(filter(None, (contact.get("First_Name"), contact.get("Last_Name"))))
            values["Contact_Name"] = {"name": name, "id": contact["id"]}
        if module == "Notes" and "Parent_Id" in values:
            parent = values["Parent_Id"]
            parent_module = parent["module"]["api_name"]
            values["Parent_Id"] = {
                "module": {"api_name": parent_module, "id": "5725767000000002179"},
                "name": self.records[parent_module][str(parent["id"])].get("Deal_Name")
                or self.records[parent_module][str(parent["id"])].get("Last_Name"),
                "id": str(parent["id"]),
            }
        return values

    def _problem(self, module: str, name: str, value: Any) -> dict[str, Any]:
        """What is wrong with one value ({} for nothing)."""
        if value is None:
            return {}
        if name == "Amount" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return {"expected_data_type": "double"}
        if name == "Email" and not (isinstance(value, str) and _EMAIL.match(value)):
            return {"expected_data_type": "email"}
        if name == "Closing_Date" and not (isinstance(value, str) and _DATE.match(value)):
            return {"expected_data_type": "date"}
        if name == "Stage" and value not in STAGES:
            return {"expected_data_type": "picklist"}
        if name == "Currency" and value not in self.currencies:
            return {"expected_data_type": "picklist"}
        if name == "Contact_Name":
            if not isinstance(value, dict) or str(value.get("id")) not in self.records["Contacts"]:
                return {"expected_data_type": "lookup"}
        if name == "Parent_Id":
            parent_module = (
                value.get("module", {}).get("api_name") if isinstance(value, dict) else None
            )
            if parent_module not in ("Contacts", "Leads", "Deals"):
                return {"expected_data_type": "jsonobject"}
            if str(value.get("id")) not in self.records[parent_module]:
                return {"expected_data_type": "jsonobject"}
        if name not in ("Amount", "Contact_Name", "Parent_Id") and not isinstance(value, str):
            return {"expected_data_type": "text"}
        return {}


def _parse_criteria(criteria: str) -> tuple[list[tuple[str, str]], str]:
    """``(F:equals:V)`` or ``((F:equals:V)or(G:equals:W)...)``: the terms (field, value
    unescaped) and how they are joined."""
    invalid = ZohoError(400, "INVALID_QUERY", "invalid query formed", {"reason": "criteria"})
    text = criteria[1:-1] if criteria.startswith("((") and criteria.endswith("))") else criteria
    terms: list[tuple[str, str]] = []
    joiners: set[str] = set()
    i = 0
    while i < len(text):
        if text[i] != "(":
            raise invalid
        j, raw = i + 1, []
        while j < len(text) and text[j] != ")":
            if text[j] == "\\" and j + 1 < len(text):
                raw.append(text[j : j + 2])
                j += 2
                continue
            if text[j] in "(,":
                raise invalid  # must be escaped
            raw.append(text[j])
            j += 1
        if j >= len(text):
            raise invalid
        field, op, value = ("".join(raw).split(":", 2) + ["", ""])[:3]
        if op != "equals" or not field:
            raise ZohoError(400, "INVALID_QUERY", "fake: only equals is implemented")
        terms.append((field, re.sub(r"\\(.)", r"\1", value)))
        i = j + 1
        for joiner in ("or", "and"):
            if text.startswith(joiner, i):
                joiners.add(joiner)
                i += len(joiner)
                break
    if not terms or len(terms) > 10 or len(joiners) > 1:
        raise invalid
    return terms, joiners.pop() if joiners else "or"


def _matches(record: dict[str, Any], terms: list[tuple[str, str]], joiner: str) -> bool:
    hits = [str(record.get(f, "")).lower() == v.lower() for f, v in terms]
    return any(hits) if joiner == "or" else all(hits)


def _where(name: str) -> dict[str, Any]:
    return {"api_name": name, "json_path": f"$.data[0].{name}"}


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ZohoError(400, "INVALID_DATA", f"{name} must be a number") from None


def _answer(answers: list[dict[str, Any]], created: bool) -> web.Response:
    failed = [a for a in answers if a.get("status") != "success"]
    if failed and len(failed) == len(answers):
        status = 400
    elif failed:
        status = 207
    else:
        status = 201 if created else 200
    return web.json_response({"data": answers}, status=status)


def _error(e: ZohoError) -> web.Response:
    return web.json_response(e.body(), status=e.status, headers=e.headers)


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
