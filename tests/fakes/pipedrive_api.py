"""A local fake of Pipedrive's REST API: v2 persons and deals, v1 leads and notes.

It serves what :class:`commerce.crm.pipedrive.PipedriveCRM` calls, on the paths a
company domain and api.pipedrive.com both serve:

* ``GET /api/v2/persons/search``, ``GET|PATCH /api/v2/persons/{id}``, ``POST /api/v2/persons``
* ``GET /api/v2/deals/search``, ``GET|PATCH /api/v2/deals/{id}``, ``POST /api/v2/deals``
* ``GET /api/v1/leads/search``, ``PATCH /api/v1/leads/{id}``, ``POST /api/v1/leads``
* ``GET /api/v1/notes`` (``person_id``, ``deal_id``, ``start``, ``limit``),
  ``PUT /api/v1/notes/{id}``, ``POST /api/v1/notes``

(v1 paths answer under ``/v1/`` too). It checks the API token (``x-api-token`` header
or ``api_token`` query parameter; v2 takes the header only), the bodies as Pipedrive
does (unknown fields refused; v2 strict about types: numbers must be JSON numbers;
required fields; stage ids, currencies, statuses, custom field keys of the account,
persons and deals referred to), keeps records in memory and answers in Pipedrive's
shapes: ``{"success": true, "data": ..., "additional_data": ...}``, search hits as
``data.items[].item`` (custom field values as a list of values), errors as
``{"success": false, "error": ..., "errorCode": ..., "error_info": ...}``; every answer
carries the ``x-ratelimit-*`` headers. Searches with ``exact_match=true`` match whole
values, in any case; phones match on their digits.

Scriptable like the other fakes: :meth:`fail_next` (status, ``Retry-After``,
``x-ratelimit-reset``), :meth:`delay_next`, :meth:`outage`, :meth:`go_down` /
:meth:`come_up`. Every request is recorded in :attr:`requests`.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from tests.fakes.server import FakeAPI

# the account's deal custom field habla keeps its reference in (text)
REF_FIELD = "9dc80c50d78a15643bfc4ca79d76156a73a1a0e9"
STAGES = {1: "Lead In", 2: "Contact Made", 3: "Demo Scheduled", 4: "Proposal Made", 5: "Closing"}
PERSON_KEYS = {
    "name",
    "owner_id",
    "org_id",
    "emails",
    "phones",
    "visible_to",
    "label_ids",
    "marketing_status",
    "add_time",
    "update_time",
    "custom_fields",
}
DEAL_KEYS = {
    "title",
    "owner_id",
    "person_id",
    "org_id",
    "pipeline_id",
    "stage_id",
    "value",
    "currency",
    "add_time",
    "update_time",
    "stage_change_time",
    "is_deleted",
    "status",
    "probability",
    "lost_reason",
    "visible_to",
    "close_time",
    "won_time",
    "lost_time",
    "expected_close_date",
    "label_ids",
    "custom_fields",
}
LEAD_KEYS = {
    "title",
    "owner_id",
    "label_ids",
    "person_id",
    "organization_id",
    "value",
    "expected_close_date",
    "visible_to",
    "was_seen",
    "origin_id",
    "channel",
    "channel_id",
}
NOTE_KEYS = {
    "content",
    "person_id",
    "deal_id",
    "lead_id",
    "org_id",
    "user_id",
    "add_time",
    "pinned_to_person_flag",
    "pinned_to_deal_flag",
    "pinned_to_lead_flag",
    "pinned_to_organization_flag",
}
SEARCH_FIELDS = {
    "persons": {"name", "email", "phone", "notes", "custom_fields"},
    "deals": {"title", "notes", "custom_fields"},
    "leads": {"title", "notes", "custom_fields"},
}
ERROR_INFO = "Please check developers.pipedrive.com for more information about Pipedrive API."
OWNER = {"id": 1, "name": "Habla Test", "email": "owner@example.com"}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    token: str  # from the x-api-token header, else the api_token parameter
    body: Any


class PipedriveError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class FakePipedriveAPI(FakeAPI):
    def __init__(
        self,
        token: str,
        deal_fields: Iterable[str] = (REF_FIELD,),
        person_fields: Iterable[str] = (),
        currencies: Iterable[str] = ("EUR", "USD", "GBP"),
    ) -> None:
        super().__init__()
        self.token = token
        self.deal_fields = set(deal_fields)  # custom field keys (leads share them)
        self.person_fields = set(person_fields)
        self.currencies = set(currencies)
        self.records: dict[str, dict[str, dict[str, Any]]] = {
            k: {} for k in ("persons", "deals", "leads", "notes")
        }
        self.requests: list[Recorded] = []
        self._failures: list[tuple[int, float | None, float | None]] = []
        self._ids = itertools.count(1)

    # ---------------------------------------------------------------- control

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        retry_after: float | None = None,
        reset: float | None = None,
    ) -> None:
        """Answer the next ``n`` requests with ``status`` (with ``Retry-After`` and
        ``x-ratelimit-reset`` headers when given)."""
        self._failures.extend([(status, retry_after, reset)] * n)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        r = app.router
        for kind in ("persons", "deals"):
            r.add_get(f"/api/v2/{kind}/search", self.search)
            r.add_post(f"/api/v2/{kind}", self.create)
            r.add_get(f"/api/v2/{kind}/{{id}}", self.get)
            r.add_patch(f"/api/v2/{kind}/{{id}}", self.update)
        for prefix in ("/api/v1", "/v1"):
            r.add_get(f"{prefix}/leads/search", self.search)
            r.add_post(f"{prefix}/leads", self.create)
            r.add_patch(f"{prefix}/leads/{{id}}", self.update)
            r.add_get(f"{prefix}/notes", self.list_notes)
            r.add_post(f"{prefix}/notes", self.create)
            r.add_put(f"{prefix}/notes/{{id}}", self.update)
        return app

    # ---------------------------------------------------------------- views

    def objects(self, kind: str) -> list[dict[str, Any]]:
        """The stored records of ``kind`` (persons, deals, leads, notes), API-shaped."""
        return list(self.records[kind].values())

    def flat(self, kind: str) -> list[dict[str, Any]]:
        """Records with custom fields at the top and a person's primary ``phone`` and
        ``email``, for assertions."""
        out = []
        for record in self.objects(kind):
            flat = {k: v for k, v in record.items() if k != "custom_fields"}
            flat.update(record.get("custom_fields") or {})
            for key, listed in (("phone", "phones"), ("email", "emails")):
                if listed in record:
                    primary = [e["value"] for e in record[listed] if e.get("primary")]
                    flat[key] = (primary or [e["value"] for e in record[listed]] or [None])[0]
            out.append(flat)
        return out

    def sent(self, method: str, path_prefix: str) -> list[Any]:
        return [
            r.body for r in self.requests if r.method == method and r.path.startswith(path_prefix)
        ]

    # ---------------------------------------------------------------- handlers

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        headers = {
            "x-ratelimit-limit": "40",
            "x-ratelimit-remaining": "39",
            "x-ratelimit-reset": "2",
        }
        try:
            response = await handler(request)
        except PipedriveError as e:
            body: dict[str, Any] = {
                "success": False,
                "error": e.message,
                "error_info": ERROR_INFO,
                "data": None,
                "additional_data": None,
            }
            if e.status in (401, 429):
                body["errorCode"] = e.status
            response = web.json_response(body, status=e.status)
            headers.update(e.headers)
        response.headers.update(headers)
        return response

    async def _begin(self, request: web.Request) -> Any:
        """Record the request, apply scripted delays/failures and check the token; the body."""
        body = await self.read_json(request)
        v2 = request.path.startswith("/api/v2/")
        token = request.headers.get("x-api-token") or (
            "" if v2 else request.query.get("api_token", "")
        )
        query = {k: v for k, v in request.query.items() if k != "api_token"}
        self.requests.append(Recorded(request.method, request.path, query, token, body))
        await self.hold()
        if self._failures:
            status, retry_after, reset = self._failures.pop(0)
            headers = {}
            if retry_after is not None:
                headers["Retry-After"] = f"{retry_after:g}"
            if reset is not None:
                headers["x-ratelimit-reset"] = f"{reset:g}"
                headers["x-ratelimit-remaining"] = "0"
            raise PipedriveError(status, _status_message(status), headers)
        if self.down.refuses():
            raise PipedriveError(self.down.status, _status_message(self.down.status))
        if token != self.token:
            raise PipedriveError(401, "unauthorized access")
        if request.method in ("POST", "PUT", "PATCH"):
            if request.content_type != "application/json" or not isinstance(body, dict):
                raise PipedriveError(400, "Request body must be a JSON object")
        return body

    async def search(self, request: web.Request) -> web.Response:
        await self._begin(request)
        kind = _kind(request)
        q = request.query
        term, exact = q.get("term", ""), q.get("exact_match", "false") == "true"
        if len(term) < (1 if exact else 2):
            raise PipedriveError(400, "Search term must be at least 2 characters long")
        fields = set(filter(None, q.get("fields", "").split(","))) or SEARCH_FIELDS[kind]
        if fields - SEARCH_FIELDS[kind]:
            raise PipedriveError(400, f"Invalid fields: {sorted(fields - SEARCH_FIELDS[kind])}")
        limit = int(q.get("limit", "100"))
        if not 0 < limit <= 500:
            raise PipedriveError(400, "limit must be between 1 and 500")
        hits = [r for r in self.records[kind].values() if _hit(kind, r, fields, term, exact)]
        items = [{"result_score": 1.0, "item": self._search_item(kind, r)} for r in hits]
        if kind == "leads":  # v1
            more = {"start": 0, "limit": limit, "more_items_in_collection": len(hits) > limit}
            extra: dict[str, Any] = {"pagination": more}
        else:
            extra = {"next_cursor": None}
        return _ok({"items": items[:limit]}, extra)

    async def get(self, request: web.Request) -> web.Response:
        await self._begin(request)
        return _ok(self._record(_kind(request), request.match_info["id"]))

    async def create(self, request: web.Request) -> web.Response:
        body = await self._begin(request)
        kind = _kind(request)
        self._check(kind, body, creating=True)
        now = _now()
        record: dict[str, Any]
        if kind == "persons":
            record = {
                "id": next(self._ids),
                "name": "",
                "owner_id": OWNER["id"],
                "org_id": None,
                "emails": [],
                "phones": [],
                "visible_to": 3,
                "label_ids": [],
                "is_deleted": False,
                "custom_fields": {k: None for k in sorted(self.person_fields)},
            }
        elif kind == "deals":
            record = {
                "id": next(self._ids),
                "title": "",
                "owner_id": OWNER["id"],
                "person_id": None,
                "org_id": None,
                "pipeline_id": 1,
                "stage_id": 1,
                "value": 0,
                "currency": "EUR",
                "status": "open",
                "is_deleted": False,
                "visible_to": 3,
                "won_time": None,
                "lost_time": None,
                "close_time": None,
                "custom_fields": {k: None for k in sorted(self.deal_fields)},
            }
        elif kind == "leads":
            record = {
                "id": str(uuid.uuid4()),
                "title": "",
                "owner_id": OWNER["id"],
                "creator_id": OWNER["id"],
                "label_ids": [],
                "person_id": None,
                "organization_id": None,
                "source_name": "API",
                "origin": "API",
                "is_archived": False,
                "was_seen": False,
                "value": None,
                "expected_close_date": None,
                "visible_to": "3",
            }
        else:
            record = {
                "id": next(self._ids),
                "user_id": OWNER["id"],
                "person_id": None,
                "deal_id": None,
                "lead_id": None,
                "org_id": None,
                "active_flag": True,
                "pinned_to_person_flag": False,
                "pinned_to_deal_flag": False,
                "pinned_to_lead_flag": False,
            }
        record |= {"add_time": now, "update_time": now}
        self._apply(kind, record, body)
        self.records[kind][str(record["id"])] = record
        return _ok(record, status=201)

    async def update(self, request: web.Request) -> web.Response:
        body = await self._begin(request)
        kind = _kind(request)
        record = self._record(kind, request.match_info["id"])
        self._check(kind, body, creating=False)
        self._apply(kind, record, body)
        record["update_time"] = _now()
        return _ok(record)

    async def list_notes(self, request: web.Request) -> web.Response:
        await self._begin(request)
        q = request.query
        start, limit = int(q.get("start", "0")), int(q.get("limit", "100"))
        if not 0 < limit <= 500:
            raise PipedriveError(400, "limit must be between 1 and 500")
        notes = list(self.records["notes"].values())
        for key in ("person_id", "deal_id", "lead_id", "org_id"):
            if key in q:
                notes = [n for n in notes if str(n.get(key)) == q[key]]
        page = notes[start : start + limit]
        more = start + limit < len(notes)
        pagination: dict[str, Any] = {
            "start": start,
            "limit": limit,
            "more_items_in_collection": more,
        }
        if more:
            pagination["next_start"] = start + limit
        return _ok(page, {"pagination": pagination})

    # ---------------------------------------------------------------- validation

    def _record(self, kind: str, record_id: str) -> dict[str, Any]:
        record = self.records[kind].get(record_id)
        if record is None:
            raise PipedriveError(404, f"{kind[:-1].capitalize()} not found")
        return record

    def _check(self, kind: str, body: dict[str, Any], *, creating: bool) -> None:
        allowed = {
            "persons": PERSON_KEYS,
            "deals": DEAL_KEYS,
            "leads": LEAD_KEYS | self.deal_fields,
            "notes": NOTE_KEYS,
        }[kind]
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise PipedriveError(400, f"Invalid field(s) provided: {', '.join(unknown)}")
        required = {"persons": "name", "deals": "title", "leads": "title", "notes": "content"}
        name = required[kind]
        if (creating or name in body) and not (isinstance(body.get(name), str) and body[name]):
            raise PipedriveError(400, f"{name} must be a non-empty string")
        if kind == "persons":
            for key in ("emails", "phones"):
                if key in body and not (
                    isinstance(body[key], list)
                    and all(
                        isinstance(e, dict) and isinstance(e.get("value"), str) for e in body[key]
                    )
                ):
                    raise PipedriveError(
                        400, f"{key} must be an array of {{value, primary, label}}"
                    )
            self._check_custom(body.get("custom_fields"), self.person_fields)
        if kind == "deals":
            if "value" in body and not _number(body["value"]):
                raise PipedriveError(400, "value must be a number")
            if "currency" in body and body["currency"] not in self.currencies:
                raise PipedriveError(400, f"Currency {body['currency']!r} is not supported")
            if "status" in body and body["status"] not in ("open", "won", "lost", "deleted"):
                raise PipedriveError(400, "status must be one of open, won, lost, deleted")
            if "stage_id" in body and body["stage_id"] not in STAGES:
                raise PipedriveError(400, f"Stage {body['stage_id']!r} not found")
            self._check_custom(body.get("custom_fields"), self.deal_fields)
        if kind == "leads":
            if creating and not (body.get("person_id") or body.get("organization_id")):
                raise PipedriveError(400, "A lead must be linked to a person or an organization")
        links = {"person_id": "persons", "deal_id": "deals", "lead_id": "leads"}
        for key, target in links.items():
            if body.get(key) is None:
                continue
            if key != "lead_id" and not _int(body[key]):
                raise PipedriveError(400, f"{key} must be an integer")
            if str(body[key]) not in self.records[target]:
                raise PipedriveError(400, f"{target[:-1].capitalize()} {body[key]} not found")
        if (
            kind == "notes"
            and creating
            and not any(body.get(k) for k in ("person_id", "deal_id", "lead_id", "org_id"))
        ):
            raise PipedriveError(
                400, "A note must be linked to a person, deal, lead or organization"
            )

    def _check_custom(self, custom: Any, known: set[str]) -> None:
        if custom is None:
            return
        if not isinstance(custom, dict):
            raise PipedriveError(400, "custom_fields must be an object")
        unknown = sorted(set(custom) - known)
        if unknown:
            raise PipedriveError(400, f"Unknown custom field(s): {', '.join(unknown)}")

    def _apply(self, kind: str, record: dict[str, Any], body: dict[str, Any]) -> None:
        for key, value in body.items():
            if key == "custom_fields":
                record.setdefault("custom_fields", {}).update(value)
            else:
                record[key] = value
        if kind == "persons":
            first, _, last = str(record["name"]).partition(" ")
            record["first_name"], record["last_name"] = first, last or None
        if kind == "deals" and "status" in body:
            now = _now()
            record["won_time"] = now if body["status"] == "won" else None
            record["lost_time"] = now if body["status"] == "lost" else None
            record["close_time"] = now if body["status"] in ("won", "lost") else None

    def _search_item(self, kind: str, r: dict[str, Any]) -> dict[str, Any]:
        owner = {"id": OWNER["id"]}
        person = self.records["persons"].get(str(r.get("person_id")))
        person_ref = {"id": person["id"], "name": person["name"]} if person else None
        if kind == "persons":
            return {
                "id": r["id"],
                "type": "person",
                "name": r["name"],
                "phones": [e["value"] for e in r["phones"]],
                "emails": [e["value"] for e in r["emails"]],
                "visible_to": r["visible_to"],
                "owner": owner,
                "organization": None,
                "custom_fields": _custom_values(r.get("custom_fields")),
                "notes": [],
                "update_time": r["update_time"],
            }
        if kind == "deals":
            return {
                "id": r["id"],
                "type": "deal",
                "title": r["title"],
                "value": r["value"],
                "currency": r["currency"],
                "status": r["status"],
                "visible_to": r["visible_to"],
                "owner": owner,
                "stage": {"id": r["stage_id"], "name": STAGES[r["stage_id"]]},
                "person": person_ref,
                "organization": None,
                "custom_fields": _custom_values(r.get("custom_fields")),
                "notes": [],
                "is_archived": False,
            }
        custom = {k: v for k, v in r.items() if k in self.deal_fields}
        return {
            "id": r["id"],
            "type": "lead",
            "title": r["title"],
            "owner": owner,
            "person": person_ref,
            "organization": None,
            "phones": [],
            "emails": [],
            "custom_fields": _custom_values(custom),
            "notes": [],
            "value": None,
            "currency": None,
            "visible_to": 3,
            "is_archived": r["is_archived"],
        }


def _kind(request: web.Request) -> str:
    return next(p for p in request.path.split("/") if p in ("persons", "deals", "leads", "notes"))


def _hit(kind: str, r: dict[str, Any], fields: set[str], term: str, exact: bool) -> bool:
    values: list[tuple[str, str]] = []
    if "name" in fields and kind == "persons":
        values.append(("name", r["name"]))
    if "title" in fields and kind != "persons":
        values.append(("title", r["title"]))
    if "phone" in fields:
        values += [("phone", e["value"]) for e in r.get("phones", [])]
    if "email" in fields:
        values += [("email", e["value"]) for e in r.get("emails", [])]
    if "custom_fields" in fields:
        custom = r.get("custom_fields") if kind != "leads" else r
        values += [("custom", str(v)) for v in _custom_values(custom)]
    for field, value in values:
        a, b = value.lower(), term.lower()
        if field == "phone":
            a, b = _digits(a), _digits(b)
        if (a == b) if exact else (b in a):
            return True
    return False


def _custom_values(custom: Any) -> list[Any]:
    if not isinstance(custom, dict):
        return []
    return [v for k, v in custom.items() if len(k) == 40 and v not in (None, "")]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _status_message(status: int) -> str:
    return {
        408: "Request Timeout",
        429: "Request over limit",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }.get(status, "Error")


def _ok(data: Any, additional: Any = None, status: int = 200) -> web.Response:
    body = {"success": True, "data": data, "additional_data": additional}
    return web.json_response(body, status=status)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
