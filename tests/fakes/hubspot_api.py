"""A local fake of the HubSpot CRM API: the v3 objects endpoints and v4 default associations.

It serves exactly what :class:`commerce.crm.hubspot.HubSpotCRM` calls through the
official SDK:

* ``POST  /crm/v3/objects/{type}/search``  (EQ filters; filter groups OR'ed)
* ``POST  /crm/v3/objects/{type}``          (create, with ``associations``)
* ``PATCH /crm/v3/objects/{type}/{id}``     (update)
* ``PUT   /crm/v4/objects/{from}/{id}/associations/default/{to}/{toId}``

for ``contacts``, ``deals``, ``leads`` and ``notes``. It checks the bearer token, the
JSON bodies (known properties only, string values, numbers, stage ids of the pipeline,
currencies, timestamps, e-mail syntax, required properties, association type ids and
their targets), keeps records in memory and answers in HubSpot's shapes (``id``,
``properties``, ``createdAt``, ``updatedAt``, ``archived``; errors as ``status``,
``message``, ``category``). Like HubSpot, a second contact with the same e-mail is a
409 naming the existing id. Stricter than HubSpot: property values must be JSON
strings, as the SDK's models declare them.

Scriptable: :meth:`fail_next` (status, Retry-After), :meth:`delay_next` (slow answers),
:meth:`go_down`/:meth:`come_up` (closed port, state kept) and ``search_lag`` (new records
stay out of search results until :meth:`index`, like HubSpot's lagging index).
Every request is recorded in :attr:`requests`.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from tests.fakes.server import FakeAPI

BUILTIN_PROPERTIES: dict[str, set[str]] = {
    "contacts": {
        "email",
        "phone",
        "mobilephone",
        "firstname",
        "lastname",
        "hs_language",
        "lifecyclestage",
        "company",
    },
    "deals": {"dealname", "amount", "dealstage", "pipeline", "deal_currency_code", "closedate"},
    "leads": {"hs_lead_name", "hs_lead_type", "hs_lead_label"},
    "notes": {"hs_note_body", "hs_timestamp"},
}
# the portal's custom properties (habla's idempotency key) unless a test says otherwise
DEFAULT_CUSTOM = {"deals": ["habla_ref"], "leads": ["habla_ref"], "notes": ["habla_ref"]}
READ_ONLY = {"hs_object_id", "createdate", "lastmodifieddate"}
PIPELINES = {
    "default": {
        "appointmentscheduled",
        "qualifiedtobuy",
        "presentationscheduled",
        "decisionmakerboughtin",
        "contractsent",
        "closedwon",
        "closedlost",
    }
}
# HubSpot-defined association type id -> (from type, to type)
ASSOCIATION_TYPES: dict[int, tuple[str, str]] = {
    3: ("deals", "contacts"),
    4: ("contacts", "deals"),
    202: ("notes", "contacts"),
    214: ("notes", "deals"),
    578: ("leads", "contacts"),
}
DEFAULT_TYPES = {pair: type_id for type_id, pair in ASSOCIATION_TYPES.items()}
REQUIRED = {"notes": ("hs_timestamp",), "leads": ("hs_lead_name",)}
_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)$")


@dataclass
class Recorded:
    method: str
    path: str
    authorization: str
    body: Any


class HubSpotError(Exception):
    def __init__(
        self, status: int, message: str, category: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.category = status, message, category
        self.headers = headers


class FakeHubSpotAPI(FakeAPI):
    def __init__(
        self,
        token: str,
        custom_properties: Mapping[str, Iterable[str]] | None = None,
        currencies: Iterable[str] = ("EUR", "USD", "GBP"),
    ) -> None:
        super().__init__()
        self.token = token
        custom = DEFAULT_CUSTOM if custom_properties is None else custom_properties
        self.properties = {
            kind: props | set(custom.get(kind, ())) for kind, props in BUILTIN_PROPERTIES.items()
        }
        self.currencies = set(currencies)
        self.records: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in BUILTIN_PROPERTIES}
        self.associations: set[tuple[str, str, str, str, int]] = set()
        self.requests: list[Recorded] = []
        self.search_lag = False
        self.unindexed: set[str] = set()
        self._failures: list[tuple[int, float | None]] = []
        self.created = asyncio.Condition()  # notified on each record created
        self._ids = itertools.count(1001)

    # ---------------------------------------------------------------- control

    def fail_next(self, n: int = 1, status: int = 503, retry_after: float | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (and a Retry-After header)."""
        self._failures.extend([(status, retry_after)] * n)

    def index(self) -> None:
        """Let search see every record (the end of the ``search_lag`` window)."""
        self.unindexed.clear()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/crm/v3/objects/{kind}/search", self.search)
        app.router.add_post("/crm/v3/objects/{kind}", self.create)
        app.router.add_patch("/crm/v3/objects/{kind}/{id}", self.update)
        app.router.add_put(
            "/crm/v4/objects/{kind}/{id}/associations/default/{to_kind}/{to_id}",
            self.associate,
        )
        return app

    # ---------------------------------------------------------------- views

    def objects(self, kind: str) -> list[dict[str, Any]]:
        return list(self.records[kind].values())

    def linked(self, kind: str, object_id: str, to_kind: str) -> set[str]:
        """Ids of ``to_kind`` records associated with ``kind`` ``object_id`` (either way)."""
        out = set()
        for a_kind, a_id, b_kind, b_id, _ in self.associations:
            if (a_kind, a_id, b_kind) == (kind, object_id, to_kind):
                out.add(b_id)
            if (b_kind, b_id, a_kind) == (kind, object_id, to_kind):
                out.add(a_id)
        return out

    def sent(self, method: str, path_prefix: str) -> list[Any]:
        """Bodies of recorded requests with this method whose path starts with the prefix."""
        return [
            r.body for r in self.requests if r.method == method and r.path.startswith(path_prefix)
        ]

    # ---------------------------------------------------------------- handlers

    async def _begin(self, request: web.Request) -> Any:
        """Record the request, apply scripted delays/failures and check auth; the body."""
        body = await self.read_json(request)
        self.requests.append(
            Recorded(request.method, request.path, request.headers.get("Authorization", ""), body)
        )
        await self.hold()
        if self._failures:
            status, retry_after = self._failures.pop(0)
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
            if status == 429:
                raise HubSpotError(
                    429, "You have reached your secondly limit.", "RATE_LIMITS", headers
                )
            raise HubSpotError(status, "Service Unavailable", "SERVICE_UNAVAILABLE", headers)
        if self.down.refuses():
            if self.down.status == 429:
                raise HubSpotError(429, "You have reached your secondly limit.", "RATE_LIMITS")
            raise HubSpotError(self.down.status, "Service Unavailable", "SERVICE_UNAVAILABLE")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise HubSpotError(
                401,
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication and you can find more details at "
                "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                "INVALID_AUTHENTICATION",
            )
        kind = request.match_info["kind"]
        if kind not in self.records:
            raise HubSpotError(400, f"Unable to infer object type from: {kind}", "VALIDATION_ERROR")
        if request.method in ("POST", "PATCH"):
            if not request.content_type == "application/json" or not isinstance(body, dict):
                raise HubSpotError(400, "Invalid input JSON on line 1", "VALIDATION_ERROR")
        return body

    async def search(self, request: web.Request) -> web.Response:
        try:
            body = await self._begin(request)
            kind = request.match_info["kind"]
            groups = body.get("filterGroups") or []
            limit = body.get("limit", 10)
            if not isinstance(limit, int) or not 0 < limit <= 200:
                raise HubSpotError(400, "limit must be between 1 and 200", "VALIDATION_ERROR")
            if len(groups) > 5 or any(len(g.get("filters") or []) > 6 for g in groups):
                raise HubSpotError(400, "Too many filter groups or filters", "VALIDATION_ERROR")
            for group in groups:
                for f in group.get("filters") or []:
                    if f.get("operator") != "EQ":
                        raise HubSpotError(400, "fake: only EQ is implemented", "VALIDATION_ERROR")
                    self._check_known(kind, [f.get("propertyName")])
                    if not isinstance(f.get("value"), str):
                        raise HubSpotError(400, "filter value must be a string", "VALIDATION_ERROR")
            wanted = body.get("properties") or []
            self._check_known(kind, wanted)
            hits = [
                r
                for r in self.records[kind].values()
                if r["id"] not in self.unindexed and (not groups or _matches(r, groups))
            ]
            return web.json_response(
                {"total": len(hits), "results": [_view(r, wanted) for r in hits[:limit]]}
            )
        except HubSpotError as e:
            return _error(e)

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = await self._begin(request)
            kind = request.match_info["kind"]
            properties = body.get("properties")
            self._check_properties(kind, properties)
            for name in REQUIRED.get(kind, ()):
                if not properties.get(name):
                    raise HubSpotError(
                        400, f"Missing required property: {name}", "VALIDATION_ERROR"
                    )
            links = self._check_associations(kind, body.get("associations") or [])
            if kind == "leads" and not any(to_kind == "contacts" for to_kind, _, _ in links):
                raise HubSpotError(
                    400, "A lead must be associated with a contact", "VALIDATION_ERROR"
                )
            email = str(properties.get("email", "")).lower()
            if kind == "contacts" and email:
                for other in self.records["contacts"].values():
                    if str(other["properties"].get("email", "")).lower() == email:
                        raise HubSpotError(
                            409, f"Contact already exists. Existing ID: {other['id']}", "CONFLICT"
                        )
            object_id, now = str(next(self._ids)), _now()
            record = {
                "id": object_id,
                "properties": {
                    **properties,
                    "hs_object_id": object_id,
                    "createdate": now,
                    "lastmodifieddate": now,
                },
                "createdAt": now,
                "updatedAt": now,
                "archived": False,
            }
            self.records[kind][object_id] = record
            if self.search_lag:
                self.unindexed.add(object_id)
            for to_kind, to_id, type_id in links:
                self.associations.add((kind, object_id, to_kind, to_id, type_id))
            async with self.created:
                self.created.notify_all()
            return web.json_response(_view(record, properties), status=201)
        except HubSpotError as e:
            return _error(e)

    async def update(self, request: web.Request) -> web.Response:
        try:
            body = await self._begin(request)
            kind, object_id = request.match_info["kind"], request.match_info["id"]
            record = self.records[kind].get(object_id)
            if record is None:
                raise HubSpotError(404, "resource not found", "OBJECT_NOT_FOUND")
            if set(body) - {"properties"}:
                raise HubSpotError(400, "Only properties can be updated", "VALIDATION_ERROR")
            properties = body.get("properties")
            self._check_properties(kind, properties)
            now = _now()
            record["properties"].update(properties, lastmodifieddate=now)
            record["updatedAt"] = now
            return web.json_response(_view(record, properties))
        except HubSpotError as e:
            return _error(e)

    async def associate(self, request: web.Request) -> web.Response:
        try:
            await self._begin(request)
            m = request.match_info
            pair = (m["kind"], m["to_kind"])
            if pair not in DEFAULT_TYPES:
                raise HubSpotError(400, f"No default association for {pair}", "VALIDATION_ERROR")
            for kind, object_id in ((m["kind"], m["id"]), (m["to_kind"], m["to_id"])):
                if object_id not in self.records.get(kind, {}):
                    raise HubSpotError(404, f"{kind} {object_id} not found", "OBJECT_NOT_FOUND")
            type_id = DEFAULT_TYPES[pair]
            self.associations.add((m["kind"], m["id"], m["to_kind"], m["to_id"], type_id))
            now = _now()
            spec = {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}
            return web.json_response(
                {
                    "status": "COMPLETE",
                    "results": [
                        {"from": {"id": m["id"]}, "to": {"id": m["to_id"]}, "associationSpec": spec}
                    ],
                    "startedAt": now,
                    "completedAt": now,
                }
            )
        except HubSpotError as e:
            return _error(e)

    # ---------------------------------------------------------------- validation

    def _check_known(self, kind: str, names: Iterable[Any]) -> None:
        unknown = [n for n in names if n not in self.properties[kind] | READ_ONLY]
        if unknown:
            raise HubSpotError(
                400,
                f"There was a problem with the request: unknown {kind} properties {unknown}",
                "VALIDATION_ERROR",
            )

    def _check_properties(self, kind: str, properties: Any) -> None:
        if not isinstance(properties, dict) or not properties:
            raise HubSpotError(400, "properties must be a non-empty object", "VALIDATION_ERROR")
        problems = []
        for name, value in properties.items():
            if name not in self.properties[kind]:
                problems.append(
                    (name, "PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist')
                )
            elif not isinstance(value, str):
                problems.append((name, "INVALID_TYPE", f"{name} must be a string"))
            elif problem := self._check_value(kind, name, value, properties):
                problems.append((name, "INVALID_OPTION", problem))
        if problems:
            details = ", ".join(
                f'{{"isValid":false,"message":"{m}","error":"{code}","name":"{n}"}}'
                for n, code, m in problems
            )
            raise HubSpotError(
                400, f"Property values were not valid: [{details}]", "VALIDATION_ERROR"
            )

    def _check_value(self, kind: str, name: str, value: str, properties: dict[str, Any]) -> str:
        if name == "amount":
            try:
                float(value)
            except ValueError:
                return f"{value!r} is not a valid number"
        if name == "email" and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            return f"Email address {value} is invalid"
        if name == "deal_currency_code" and value not in self.currencies:
            return f"{value!r} is not one of the portal's currencies"
        if name == "pipeline" and value not in PIPELINES:
            return f"{value!r} is not a valid pipeline"
        if name == "dealstage":
            pipeline = properties.get("pipeline", "default")
            if value not in PIPELINES.get(pipeline, set()):
                return f"{value!r} is not a valid dealstage of pipeline {pipeline!r}"
        if name == "hs_timestamp" and not (value.isdigit() or _ISO.match(value)):
            return f"{value!r} is not a valid timestamp"
        return ""

    def _check_associations(self, kind: str, associations: Any) -> list[tuple[str, str, int]]:
        links = []
        for a in associations:
            try:
                to_id = str(a["to"]["id"])
                types = a["types"]
                specs = [(t["associationCategory"], t["associationTypeId"]) for t in types]
            except (KeyError, TypeError):
                raise HubSpotError(400, f"Invalid association {a!r}", "VALIDATION_ERROR") from None
            for category, type_id in specs:
                pair = ASSOCIATION_TYPES.get(type_id)
                if category != "HUBSPOT_DEFINED" or pair is None or pair[0] != kind:
                    raise HubSpotError(
                        400,
                        f"invalid association type {category}/{type_id} from {kind}",
                        "VALIDATION_ERROR",
                    )
                if to_id not in self.records[pair[1]]:
                    raise HubSpotError(
                        400, f"No {pair[1]} with id {to_id} to associate", "VALIDATION_ERROR"
                    )
                links.append((pair[1], to_id, type_id))
        return links


def _matches(record: dict[str, Any], groups: list[dict[str, Any]]) -> bool:
    """Any group whose filters all hold (EQ is case-insensitive, like HubSpot's)."""
    props = record["properties"]
    return any(
        all(
            str(props.get(f["propertyName"], "")).lower() == f["value"].lower()
            for f in group.get("filters") or []
        )
        for group in groups
    )


def _view(record: dict[str, Any], wanted: Iterable[str]) -> dict[str, Any]:
    """The record as HubSpot returns it: the asked-for and default properties."""
    keep = set(wanted) | READ_ONLY
    return {
        **record,
        "properties": {k: v for k, v in record["properties"].items() if k in keep},
    }


def _error(e: HubSpotError) -> web.Response:
    body = {
        "status": "error",
        "message": e.message,
        "correlationId": "00000000-0000-4000-8000-000000000000",
        "category": e.category,
    }
    return web.json_response(body, status=e.status, headers=e.headers)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
