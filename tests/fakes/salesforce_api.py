"""A local fake of the Salesforce REST API, over HTTPS (simple-salesforce only speaks https).

It serves what :class:`commerce.crm.salesforce.SalesforceCRM` calls through
simple-salesforce, under ``/services/data/vXX.X``:

* ``GET   /query?q=SOQL``        ``SELECT f, ... FROM Object [WHERE a = 'x' OR b = 'y'
  | AND ...] [ORDER BY f] [LIMIT n]``, with SOQL string escapes
* ``POST  /sobjects/{Object}/``  create: 201 ``{"id", "success", "errors"}``
* ``PATCH /sobjects/{Object}/{Id}``  update: 204
* ``PATCH /sobjects/{Object}/{ExternalIdField}/{value}``  upsert: 201 created; an update
  answers 200 ``{..., "created": false}`` from API 46.0 on, 204 before
* ``GET   /sobjects/{Object}/{Id}``

for Contact, Lead, Opportunity and Task. It checks ``Authorization: Bearer <session
id>``, field names per object (custom fields and External ID fields are declared per
test), required fields (LastName; Company; Name, StageName, CloseDate), picklists
(StageName, Task Status), types (Amount a number, dates ISO), ``CurrencyIsoCode`` only
in a multi-currency org, ``Opportunity.ContactId`` settable on create only, and that
``WhoId``/``WhatId``/``ContactId`` point at existing records. Errors use Salesforce's
shape, ``[{"message", "errorCode", "fields"}]``. Scriptable: :meth:`fail_next`,
:meth:`delay_next`, :meth:`go_down`/:meth:`come_up`. Every request is recorded.

:func:`self_signed_cert` writes a certificate for 127.0.0.1/localhost (test time only).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes.server import FakeAPI

SYSTEM_FIELDS = {"Id", "CreatedDate", "LastModifiedDate"}
FIELDS: dict[str, set[str]] = {
    "Contact": {"FirstName", "LastName", "Email", "Phone", "MobilePhone", "Description"},
    "Lead": {
        "FirstName",
        "LastName",
        "Company",
        "Email",
        "Phone",
        "MobilePhone",
        "LeadSource",
        "Status",
    },
    "Opportunity": {"Name", "Amount", "StageName", "CloseDate", "ContactId", "Description"},
    "Task": {"Subject", "Description", "WhoId", "WhatId", "Status", "ActivityDate", "Priority"},
}
REQUIRED = {
    "Contact": ("LastName",),
    "Lead": ("LastName", "Company"),
    "Opportunity": ("Name", "StageName", "CloseDate"),
    "Task": (),
}
DEFAULTS = {"Lead": {"Status": "Open - Not Contacted"}, "Task": {"Priority": "Normal"}}
PICKLISTS = {
    ("Opportunity", "StageName"): {
        "Prospecting",
        "Qualification",
        "Needs Analysis",
        "Value Proposition",
        "Proposal/Price Quote",
        "Negotiation/Review",
        "Closed Won",
        "Closed Lost",
    },
    ("Task", "Status"): {"Not Started", "In Progress", "Completed", "Waiting on someone else"},
}
NUMBERS = {("Opportunity", "Amount")}
DATES = {("Opportunity", "CloseDate"), ("Task", "ActivityDate")}
CREATE_ONLY = {("Opportunity", "ContactId")}
REFERENCES = {
    ("Opportunity", "ContactId"): ("Contact",),
    ("Task", "WhoId"): ("Contact", "Lead"),
    ("Task", "WhatId"): ("Opportunity",),
}
ID_PREFIX = {"Contact": "003", "Lead": "00Q", "Opportunity": "006", "Task": "00T"}

_SOQL = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<object>\w+)"
    r"(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>\w+)(?:\s+(?:ASC|DESC))?)?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_CONDITION = re.compile(r"\s*(\w+)\s*=\s*'((?:[^'\\]|\\.)*)'\s*(?:(AND|OR)\b|$)", re.IGNORECASE)
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    authorization: str
    body: Any


class SalesforceError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, list(fields)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 and localhost, written to ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "habla test salesforce")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "salesforce-cert.pem", directory / "salesforce-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class FakeSalesforceAPI(FakeAPI):
    def __init__(
        self,
        session_id: str,
        cert: tuple[Path, Path],
        external_ids: Mapping[str, Iterable[str]] | None = None,
        custom_fields: Mapping[str, Iterable[str]] | None = None,
        multi_currency: bool = False,
    ) -> None:
        super().__init__()
        self.session_id = session_id
        self.cert = cert
        ext = external_ids or {o: ["Habla_Ref__c"] for o in ("Lead", "Opportunity", "Task")}
        self.external_ids = {o: set(ext.get(o, ())) for o in FIELDS}
        custom = custom_fields or {}
        self.fields = {
            o: FIELDS[o] | SYSTEM_FIELDS | self.external_ids[o] | set(custom.get(o, ()))
            for o in FIELDS
        }
        if multi_currency:
            for o in self.fields:
                self.fields[o].add("CurrencyIsoCode")
        self.records: dict[str, dict[str, dict[str, Any]]] = {o: {} for o in FIELDS}
        self.requests: list[Recorded] = []
        self._failures: list[tuple[int, str, str]] = []
        self._ids = itertools.count(1)

    # ---------------------------------------------------------------- control

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        code: str = "SERVER_UNAVAILABLE",
        message: str = "Service temporarily unavailable",
    ) -> None:
        self._failures.extend([(status, code, message)] * n)

    def app(self) -> web.Application:
        prefix = "/services/data/v{version:\\d+\\.\\d+}"
        app = web.Application()
        app.router.add_get(prefix + "/query", self.query)
        app.router.add_get(prefix + "/query/", self.query)
        app.router.add_post(prefix + "/sobjects/{object}/", self.create)
        app.router.add_post(prefix + "/sobjects/{object}", self.create)
        app.router.add_patch(prefix + "/sobjects/{object}/{id}", self.update)
        app.router.add_get(prefix + "/sobjects/{object}/{id}", self.get)
        app.router.add_patch(prefix + "/sobjects/{object}/{field}/{value}", self.upsert)
        return app

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*self.cert)
        return context

    # ---------------------------------------------------------------- views

    def objects(self, sobject: str) -> list[dict[str, Any]]:
        return list(self.records[sobject].values())

    def sent(self, method: str, path_part: str) -> list[Any]:
        """Bodies of recorded requests with this method whose path contains ``path_part``."""
        return [r.body for r in self.requests if r.method == method and path_part in r.path]

    # ---------------------------------------------------------------- handlers

    async def _begin(self, request: web.Request) -> Any:
        body = await self.read_json(request)
        self.requests.append(
            Recorded(
                request.method,
                request.path,
                request.query_string,
                request.headers.get("Authorization", ""),
                body,
            )
        )
        await self.hold()
        if self._failures:
            raise SalesforceError(*self._failures.pop(0))
        if self.down.refuses():
            raise SalesforceError(self.down.status, "SERVER_UNAVAILABLE", "Service unavailable")
        if request.headers.get("Authorization") != f"Bearer {self.session_id}":
            raise SalesforceError(401, "INVALID_SESSION_ID", "Session expired or invalid")
        sobject = request.match_info.get("object")
        if sobject is not None and sobject not in FIELDS:
            raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
        if request.method in ("POST", "PATCH") and not isinstance(body, dict):
            raise SalesforceError(400, "JSON_PARSER_ERROR", "The request body is not an object")
        return body

    async def query(self, request: web.Request) -> web.Response:
        try:
            await self._begin(request)
            version = request.match_info["version"]
            m = _SOQL.match(request.query.get("q", ""))
            if m is None:
                raise SalesforceError(400, "MALFORMED_QUERY", "unexpected token")
            sobject = m["object"]
            if sobject not in FIELDS:
                raise SalesforceError(
                    400, "INVALID_TYPE", f"sObject type '{sobject}' is not supported."
                )
            columns = [c.strip() for c in m["fields"].split(",")]
            conditions, joiner = _conditions(m["where"] or "")
            names = columns + [f for f, _ in conditions] + ([m["order"]] if m["order"] else [])
            self._check_fields(sobject, names, "INVALID_FIELD", query=True)
            hits = [
                r
                for r in self.records[sobject].values()
                if not conditions
                or (any if joiner == "OR" else all)(
                    str(r.get(f) or "").lower() == v.lower() for f, v in conditions
                )
            ]
            if m["order"]:
                hits.sort(key=lambda r: str(r.get(m["order"]) or ""))
            if m["limit"]:
                hits = hits[: int(m["limit"])]
            records = [
                {
                    "attributes": {"type": sobject, "url": _url(version, sobject, r["Id"])},
                    **{c: r.get(c) for c in columns},
                }
                for r in hits
            ]
            return web.json_response({"totalSize": len(records), "done": True, "records": records})
        except SalesforceError as e:
            return _error(e)

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = await self._begin(request)
            record_id = self._insert(request.match_info["object"], body)
            return web.json_response({"id": record_id, "success": True, "errors": []}, status=201)
        except SalesforceError as e:
            return _error(e)

    async def update(self, request: web.Request) -> web.Response:
        try:
            body = await self._begin(request)
            sobject, record_id = request.match_info["object"], request.match_info["id"]
            if record_id not in self.records[sobject]:
                raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
            self._modify(sobject, record_id, body)
            return web.Response(status=204)
        except SalesforceError as e:
            return _error(e)

    async def get(self, request: web.Request) -> web.Response:
        try:
            await self._begin(request)
            sobject, record_id = request.match_info["object"], request.match_info["id"]
            record = self.records[sobject].get(record_id)
            if record is None:
                raise SalesforceError(404, "NOT_FOUND", "The requested resource does not exist")
            return web.json_response(record)
        except SalesforceError as e:
            return _error(e)

    async def upsert(self, request: web.Request) -> web.Response:
        try:
            body = await self._begin(request)
            m = request.match_info
            sobject, field, value = m["object"], m["field"], m["value"]
            if field not in self.external_ids[sobject]:
                raise SalesforceError(
                    404,
                    "NOT_FOUND",
                    f"Provided external ID field does not exist or is not accessible: {field}",
                )
            if field in body or "Id" in body:
                raise SalesforceError(
                    400,
                    "INVALID_FIELD",
                    f"Unable to create/update fields: {field}. Please check the security "
                    "settings of this field and verify that it is read/write for your "
                    "profile or permission set.",
                    [field],
                )
            matches = [
                r["Id"]
                for r in self.records[sobject].values()
                if str(r.get(field) or "").lower() == value.lower()
            ]
            if len(matches) > 1:
                return web.json_response(
                    [_url(m["version"], sobject, i) for i in matches], status=300
                )
            if not matches:
                record_id = self._insert(sobject, {**body, field: value})
                answer = {"id": record_id, "success": True, "errors": [], "created": True}
                return web.json_response(answer, status=201)
            self._modify(sobject, matches[0], body)
            if float(m["version"]) < 46.0:
                return web.Response(status=204)
            answer = {"id": matches[0], "success": True, "errors": [], "created": False}
            return web.json_response(answer)
        except SalesforceError as e:
            return _error(e)

    # ---------------------------------------------------------------- storage and checks

    def _insert(self, sobject: str, body: dict[str, Any]) -> str:
        self._check_values(sobject, body, creating=True)
        missing = [f for f in REQUIRED[sobject] if body.get(f) in (None, "")]
        if missing:
            raise SalesforceError(
                400,
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{', '.join(missing)}]",
                missing,
            )
        record_id = f"{ID_PREFIX[sobject]}{next(self._ids):012d}AAA"
        now = _now()
        self.records[sobject][record_id] = {
            **DEFAULTS.get(sobject, {}),
            **body,
            "Id": record_id,
            "CreatedDate": now,
            "LastModifiedDate": now,
        }
        return record_id

    def _modify(self, sobject: str, record_id: str, body: dict[str, Any]) -> None:
        self._check_values(sobject, body, creating=False)
        self.records[sobject][record_id].update(body, LastModifiedDate=_now())

    def _check_fields(self, sobject: str, names: Iterable[str], code: str, query: bool) -> None:
        for name in names:
            if name not in self.fields[sobject]:
                where = f"entity '{sobject}'" if query else f"sobject of type {sobject}"
                raise SalesforceError(400, code, f"No such column '{name}' on {where}", [name])

    def _check_values(self, sobject: str, body: dict[str, Any], creating: bool) -> None:
        self._check_fields(sobject, body, "INVALID_FIELD", query=False)
        for name, value in body.items():
            key = (sobject, name)
            if name in SYSTEM_FIELDS:
                raise SalesforceError(
                    400, "INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update: {name}"
                )
            if key in CREATE_ONLY and not creating:
                raise SalesforceError(
                    400,
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {name}. Please check the security "
                    "settings of this field and verify that it is read/write for your "
                    "profile or permission set.",
                    [name],
                )
            if key in NUMBERS and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise SalesforceError(
                    400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of double: {value!r}"
                )
            if key in DATES and not _is_date(value):
                raise SalesforceError(
                    400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of date: {value!r}"
                )
            if key in PICKLISTS and value not in PICKLISTS[key]:
                raise SalesforceError(
                    400,
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"{name}: bad value for restricted picklist field: {value}",
                    [name],
                )
            if key in REFERENCES and value:
                targets = REFERENCES[key]
                if not any(value in self.records[t] for t in targets):
                    raise SalesforceError(
                        400,
                        "FIELD_INTEGRITY_EXCEPTION",
                        f"{name}: id value of incorrect type: {value}",
                        [name],
                    )
            if name == "CurrencyIsoCode" and not re.fullmatch(r"[A-Z]{3}", str(value)):
                raise SalesforceError(
                    400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", f"bad currency {value}"
                )
            if name == "Email" and value and not re.fullmatch(r"[^@\s]+@[^@\s]+\.\w+", value):
                raise SalesforceError(
                    400, "INVALID_EMAIL_ADDRESS", f"Email: invalid email address: {value}"
                )


def _conditions(where: str) -> tuple[list[tuple[str, str]], str]:
    """``[(field, value)]`` and the one joiner (AND/OR) of a simple WHERE clause."""
    conditions, joiners, pos = [], set(), 0
    while pos < len(where):
        m = _CONDITION.match(where, pos)
        if m is None:
            raise SalesforceError(400, "MALFORMED_QUERY", f"unexpected token: {where[pos:]!r}")
        conditions.append((m[1], _unescape(m[2])))
        if m[3]:
            joiners.add(m[3].upper())
        pos = m.end()
    if len(joiners) > 1:
        raise SalesforceError(400, "MALFORMED_QUERY", "fake: mixed AND/OR needs parentheses")
    return conditions, joiners.pop() if joiners else "AND"


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m[1], m[1]), value)


def _is_date(value: Any) -> bool:
    try:
        dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True


def _url(version: str, sobject: str, record_id: str) -> str:
    return f"/services/data/v{version}/sobjects/{sobject}/{record_id}"


def _error(e: SalesforceError) -> web.Response:
    body = [{"message": e.message, "errorCode": e.code, "fields": e.fields}]
    return web.json_response(body, status=e.status)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
