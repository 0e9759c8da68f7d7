"""A local fake of the PayPal REST API endpoints habla calls, speaking the wire protocol.

- ``POST /v1/oauth2/token``: client credentials over HTTP Basic, a bearer token with
  ``expires_in``; ``{"error": "invalid_client"}`` 401 for wrong or revoked credentials.
  Every other endpoint wants ``Authorization: Bearer <a live token>``, else 401
  ``AUTHENTICATION_FAILURE``.
- Orders v2 (create, get, capture) with HATEOAS ``links`` (``payer-action`` when the
  request has ``payment_source.paypal``, ``approve`` otherwise), captures (get, refund),
  Subscriptions (create, get) with the plans given to the constructor.
- Validation as PayPal documents it: decimal strings with the currency's precision
  (no decimals for JPY, HUF, TWD), ``item_total`` matching the items and the amount,
  ``custom_id`` up to 127 characters; errors are PayPal's
  ``{"name", "message", "details": [{"issue", "description"}], "debug_id", "links"}``.
- ``PayPal-Request-Id``: a write repeated with the same id (on the same path) after
  it succeeded gets the first answer again, and creates nothing; after an error it
  runs again.
- Scripted faults in front of all that (:meth:`fail_next`, :meth:`outage`): 429 with
  ``RATE_LIMIT_REACHED``, 5xx ``INTERNAL_SERVER_ERROR``; nothing is saved for them.

The buyer's and PayPal's side (:meth:`approve`, :meth:`void`, :meth:`activate`,
:meth:`sale`, :meth:`refunded`) make webhook events, and :meth:`signed` builds their
delivery exactly as PayPal signs it: ``transmission_id|transmission_time|webhook_id|
crc32(body)`` signed SHA256withRSA with this fake's own key, whose certificate it
serves at ``PAYPAL-CERT-URL``.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import itertools
import json
import re
import secrets
import time
import uuid
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.fakes.server import Outage, serve

NO_DECIMALS = frozenset({"HUF", "JPY", "TWD"})
CURRENCIES = frozenset(
    "AUD BRL CAD CNY CZK DKK EUR HKD HUF ILS JPY MYR MXN TWD NZD NOK PHP PLN GBP SGD SEK "
    "CHF THB USD".split()
)
_VALUE = re.compile(r"^((-?[0-9]+)|(-?([0-9]+)?[.][0-9]+))$")
NAMES = {
    400: "INVALID_REQUEST",
    401: "AUTHENTICATION_FAILURE",
    404: "RESOURCE_NOT_FOUND",
    422: "UNPROCESSABLE_ENTITY",
    429: "RATE_LIMIT_REACHED",
    500: "INTERNAL_SERVER_ERROR",
    503: "SERVICE_UNAVAILABLE",
}
MESSAGES = {
    400: "Request is not well-formed, syntactically incorrect, or violates schema.",
    401: "Authentication failed due to invalid authentication credentials or a missing "
    "Authorization header.",
    404: "The specified resource does not exist.",
    422: "The requested action could not be performed, semantically incorrect, or failed "
    "business validation.",
    429: "Too many requests. Blocked due to rate limiting.",
    500: "An internal server error has occurred.",
    503: "Service Unavailable.",
}


class PayPalError(Exception):
    def __init__(self, status: int, issue: str = "", description: str = "", field: str = ""):
        super().__init__(issue or NAMES.get(status, str(status)))
        self.status, self.issue, self.description, self.field = status, issue, description, field

    def body(self) -> dict[str, Any]:
        debug_id = secrets.token_hex(7)
        out: dict[str, Any] = {
            "name": NAMES.get(self.status, "UNKNOWN_ERROR"),
            "message": MESSAGES.get(self.status, "error"),
            "debug_id": debug_id,
        }
        if self.issue:
            detail = {"issue": self.issue, "description": self.description or self.issue}
            if self.field:
                detail["field"] = self.field
            out["details"] = [detail]
            out["links"] = [
                {
                    "href": f"https://developer.paypal.com/docs/api/orders/v2/#error-{self.issue}",
                    "rel": "information_link",
                    "method": "GET",
                }
            ]
        return out


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    request_id: str
    status: int = 0
    replayed: bool = False
    at: float = field(default_factory=time.time)


@lru_cache(maxsize=1)
def signing_key() -> tuple[rsa.RSAPrivateKey, bytes]:
    """One RSA key and its self-signed certificate (PEM) for the whole test run."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "messageverificationcerts.test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


def _money(value: Any, where: str) -> tuple[str, Decimal]:
    if not isinstance(value, dict):
        raise PayPalError(400, "MISSING_REQUIRED_PARAMETER", f"{where} is required", where)
    currency, amount = value.get("currency_code"), value.get("value")
    if currency not in CURRENCIES:
        raise PayPalError(422, "CURRENCY_NOT_SUPPORTED", f"{currency!r}", f"{where}/currency_code")
    if not isinstance(amount, str) or not _VALUE.match(amount):
        raise PayPalError(400, "INVALID_PARAMETER_SYNTAX", f"{amount!r}", f"{where}/value")
    places = len(amount.partition(".")[2])
    if currency in NO_DECIMALS and places:
        raise PayPalError(422, "DECIMALS_NOT_SUPPORTED", f"{currency} has no decimals", where)
    if places > 2:
        raise PayPalError(422, "DECIMAL_PRECISION", "two decimal places at most", where)
    return currency, Decimal(amount)


def _text(value: Decimal, currency: str) -> str:
    return f"{value:.0f}" if currency in NO_DECIMALS else f"{value:.2f}"


class FakePayPalAPI:
    def __init__(
        self,
        client_id: str,
        client_secret: str,
        webhook_id: str = "",
        plans: dict[str, dict[str, str]] | None = None,
        token_ttl_s: int = 32400,
    ) -> None:
        """``plans``: plan id -> {"value": "9.00", "currency_code": "EUR"}."""
        self.client_id, self.client_secret, self.webhook_id = client_id, client_secret, webhook_id
        self.plans = plans or {}
        self.token_ttl_s = token_ttl_s
        self.tokens: dict[str, float] = {}  # live bearer token -> expiry (time.time)
        self.token_requests = 0
        self.orders: dict[str, dict[str, Any]] = {}
        self.captures: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[Recorded] = []
        self.failures: list[int] = []
        self.declines = 0  # captures to refuse with INSTRUMENT_DECLINED
        self.down = Outage()
        self._saved: dict[tuple[str, str, str], tuple[int, bytes]] = {}
        self._ids = itertools.count(1)
        self.key, self.cert_pem = signing_key()
        self.runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle and scripting ----------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/oauth2/token", self._token_endpoint)
        routes = [
            ("POST", "/v2/checkout/orders", self.create_order),
            ("GET", "/v2/checkout/orders/{id}", self.get_order),
            ("POST", "/v2/checkout/orders/{id}/capture", self.capture_order),
            ("GET", "/v2/payments/captures/{id}", self.get_capture),
            ("POST", "/v2/payments/captures/{id}/refund", self.refund_capture),
            ("POST", "/v1/billing/subscriptions", self.create_subscription),
            ("GET", "/v1/billing/subscriptions/{id}", self.get_subscription),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, self._endpoint(handler))
        app.router.add_get("/v1/notifications/certs/{name}", self._cert)
        self.runner, self.url = await serve(app)
        return self.url

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """Fail the next ``n`` authenticated API requests with ``status``, in front of
        the idempotency layer (nothing is saved under the PayPal-Request-Id)."""
        self.failures.extend([status] * n)

    def outage(self, seconds: float, status: int = 503) -> None:
        self.down.begin(seconds, status)

    def revoke(self) -> None:
        """The app's secret is rotated: live tokens stop working, and so do the
        credentials habla has."""
        self.client_secret = "rotated-" + secrets.token_hex(8)
        self.tokens.clear()

    def expire_tokens(self) -> None:
        """Every live token expires (the credentials still work)."""
        self.tokens.clear()

    def _id(self, prefix: str = "", length: int = 17) -> str:
        n = next(self._ids)
        digest = hashlib.sha1(f"{prefix}{n}{id(self)}".encode()).hexdigest().upper()
        return prefix + (f"{n:04d}" + digest)[:length]

    # -- the HTTP layer -------------------------------------------------------------

    async def _token_endpoint(self, request: web.Request) -> web.Response:
        body = await request.post()
        record = Recorded("POST", request.path, dict(request.headers), dict(body), "")
        self.requests.append(record)
        self.token_requests += 1
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            record.status = 401
            return web.json_response(
                {"error": "invalid_client", "error_description": "Client Authentication failed"},
                status=401,
            )
        if body.get("grant_type") != "client_credentials":
            record.status = 400
            return web.json_response(
                {"error": "unsupported_grant_type", "error_description": "Grant Type is NULL"},
                status=400,
            )
        token = "A21AA" + secrets.token_urlsafe(32)
        self.tokens[token] = time.time() + self.token_ttl_s
        record.status = 200
        return web.json_response(
            {
                "scope": "https://uri.paypal.com/services/payments/payment",
                "access_token": token,
                "token_type": "Bearer",
                "app_id": "APP-80W284485P519543T",
                "expires_in": self.token_ttl_s,
                "nonce": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
                + secrets.token_hex(8),
            }
        )

    async def _cert(self, request: web.Request) -> web.Response:
        return web.Response(body=self.cert_pem, content_type="application/x-pem-file")

    def _endpoint(self, handler: Any) -> Any:
        async def endpoint(request: web.Request) -> web.Response:
            raw = await request.read()
            request_id = request.headers.get("PayPal-Request-Id", "")
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            record = Recorded(request.method, request.path, dict(request.headers), body, request_id)
            self.requests.append(record)
            response = self._serve(request, body, request_id, record, handler)
            record.status = response.status
            return response

        return endpoint

    def _serve(
        self, request: web.Request, body: Any, request_id: str, record: Recorded, handler: Any
    ) -> web.Response:
        if self.down.refuses():
            return self._error(PayPalError(self.down.status))
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or self.tokens.get(token, 0) < time.time():
            return self._error(PayPalError(401), {"WWW-Authenticate": "Bearer"})
        if self.failures:
            return self._error(PayPalError(self.failures.pop(0)), {"Retry-After": "1"})
        key = (request.method, request.path, request_id)
        if request.method == "POST" and request_id and key in self._saved:
            record.replayed = True
            status, saved = self._saved[key]
            return web.Response(status=status, body=saved, content_type="application/json")
        if request.method == "POST" and not isinstance(body, dict):
            return self._error(PayPalError(400, "MALFORMED_REQUEST_JSON", "not a JSON object"))
        try:
            status, result = handler(body or {}, request.match_info)
        except PayPalError as e:  # errors are not saved: a retry runs for real
            return self._error(e)
        response = web.json_response(result, status=status)
        if request.method == "POST" and request_id:
            self._saved[key] = (status, response.body)  # type: ignore[assignment]
        return response

    @staticmethod
    def _error(e: PayPalError, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(e.body(), status=e.status, headers=headers)

    def _link(self, path: str, rel: str, method: str = "GET") -> dict[str, str]:
        return {"href": f"https://api.sandbox.paypal.com{path}", "rel": rel, "method": method}

    @staticmethod
    def _now() -> str:
        return f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ}"

    # -- orders ---------------------------------------------------------------------

    def create_order(self, p: dict[str, Any], _: Any) -> tuple[int, dict[str, Any]]:
        if p.get("intent") not in ("CAPTURE", "AUTHORIZE"):
            raise PayPalError(400, "INVALID_PARAMETER_VALUE", "intent", "/intent")
        units = p.get("purchase_units")
        if not isinstance(units, list) or not 1 <= len(units) <= 10:
            raise PayPalError(
                400, "MISSING_REQUIRED_PARAMETER", "purchase_units", "/purchase_units"
            )
        for i, unit in enumerate(units):
            where = f"/purchase_units/@reference_id=='{unit.get('reference_id', 'default')}'"
            currency, total = _money(unit.get("amount"), f"{where}/amount")
            custom = unit.get("custom_id")
            if custom is not None and not 1 <= len(str(custom)) <= 127:
                raise PayPalError(400, "INVALID_STRING_LENGTH", "custom_id", f"{where}/custom_id")
            reference = unit.get("reference_id")
            if reference is not None and not 1 <= len(str(reference)) <= 256:
                raise PayPalError(400, "INVALID_STRING_LENGTH", "reference_id", where)
            items = unit.get("items")
            if items:
                breakdown = unit["amount"].get("breakdown") or {}
                if "item_total" not in breakdown:
                    raise PayPalError(422, "ITEM_TOTAL_REQUIRED", "item_total is required", where)
                _, item_total = _money(breakdown["item_total"], f"{where}/amount/breakdown")
                summed = Decimal(0)
                for item in items:
                    item_currency, unit_amount = _money(item.get("unit_amount"), f"{where}/items")
                    if item_currency != currency:
                        raise PayPalError(422, "ITEM_CURRENCY_MISMATCH", "currency", where)
                    if not item.get("name") or not str(item.get("quantity", "")).isdigit():
                        raise PayPalError(400, "MISSING_REQUIRED_PARAMETER", "name/quantity")
                    summed += unit_amount * int(item["quantity"])
                if summed != item_total:
                    raise PayPalError(
                        422, "ITEM_TOTAL_MISMATCH", f"{summed} != {item_total}", where
                    )
                if item_total != total:
                    raise PayPalError(422, "AMOUNT_MISMATCH", f"{item_total} != {total}", where)
            unit.setdefault("reference_id", "default" if i == 0 else f"unit{i}")
        oid = self._id()
        source = (p.get("payment_source") or {}).get("paypal")
        if source is not None:
            context = source.get("experience_context") or {}
            for name in ("return_url", "cancel_url"):
                if not re.match(r"^https?://", str(context.get(name, ""))):
                    raise PayPalError(400, "INVALID_PARAMETER_SYNTAX", name, f"/{name}")
            approve = self._link(f"/checkoutnow?token={oid}", "payer-action")
            status = "PAYER_ACTION_REQUIRED"
        else:
            approve = self._link(f"/checkoutnow?token={oid}", "approve")
            status = "CREATED"
        approve["href"] = approve["href"].replace("api.sandbox", "www.sandbox")
        order = {
            "id": oid,
            "intent": p["intent"],
            "status": status,
            "payment_source": p.get("payment_source") or {},
            "purchase_units": copy.deepcopy(units),
            "create_time": self._now(),
            "links": [self._link(f"/v2/checkout/orders/{oid}", "self"), approve],
        }
        self.orders[oid] = order
        return 200, order

    def _order(self, oid: str) -> dict[str, Any]:
        order = self.orders.get(oid)
        if order is None:
            raise PayPalError(404, "INVALID_RESOURCE_ID", f"order {oid}", "order_id")
        return order

    def get_order(self, _: dict[str, Any], match: Any) -> tuple[int, dict[str, Any]]:
        return 200, self._order(match["id"])

    def capture_order(self, _: dict[str, Any], match: Any) -> tuple[int, dict[str, Any]]:
        order = self._order(match["id"])
        if order["status"] == "COMPLETED":
            raise PayPalError(422, "ORDER_ALREADY_CAPTURED", "Order already captured.")
        if order["status"] != "APPROVED":
            raise PayPalError(422, "ORDER_NOT_APPROVED", "Payer has not yet approved the Order.")
        if self.declines:  # the buyer must approve again with another funding source
            self.declines -= 1
            order["status"] = "PAYER_ACTION_REQUIRED"
            raise PayPalError(
                422,
                "INSTRUMENT_DECLINED",
                "The instrument presented was either declined by the processor or bank, or "
                "it can't be used for this payment.",
            )
        unit = order["purchase_units"][0]
        cid = self._id()
        capture = {
            "id": cid,
            "status": "COMPLETED",
            "amount": {k: unit["amount"][k] for k in ("currency_code", "value")},
            "final_capture": True,
            "seller_protection": {"status": "ELIGIBLE"},
            "custom_id": unit.get("custom_id"),
            "supplementary_data": {"related_ids": {"order_id": order["id"]}},
            "create_time": self._now(),
            "update_time": self._now(),
            "links": [
                self._link(f"/v2/payments/captures/{cid}", "self"),
                self._link(f"/v2/payments/captures/{cid}/refund", "refund", "POST"),
                self._link(f"/v2/checkout/orders/{order['id']}", "up"),
            ],
        }
        self.captures[cid] = capture
        unit["payments"] = {"captures": [capture]}
        order["status"] = "COMPLETED"
        return 201, order

    def get_capture(self, _: dict[str, Any], match: Any) -> tuple[int, dict[str, Any]]:
        capture = self.captures.get(match["id"])
        if capture is None:
            raise PayPalError(404, "INVALID_RESOURCE_ID", f"capture {match['id']}")
        return 200, capture

    def refund_capture(self, p: dict[str, Any], match: Any) -> tuple[int, dict[str, Any]]:
        capture = self.captures.get(match["id"])
        if capture is None:
            raise PayPalError(404, "INVALID_RESOURCE_ID", f"capture {match['id']}")
        currency = capture["amount"]["currency_code"]
        paid = Decimal(capture["amount"]["value"])
        done = sum(
            (
                Decimal(r["amount"]["value"])
                for r in self.refunds.values()
                if r["capture"] == capture["id"]
            ),
            Decimal(0),
        )
        if done >= paid:
            raise PayPalError(
                422, "CAPTURE_FULLY_REFUNDED", "The capture has already been fully refunded"
            )
        amount = paid - done
        if "amount" in p:
            refund_currency, amount = _money(p["amount"], "/amount")
            if refund_currency != currency:
                raise PayPalError(422, "REFUND_CURRENCY_MISMATCH", "currency", "/amount")
            if amount > paid - done:
                raise PayPalError(422, "REFUND_AMOUNT_EXCEEDED", "more than what is left")
        note = p.get("note_to_payer")
        if note is not None and len(str(note)) > 255:
            raise PayPalError(400, "INVALID_STRING_LENGTH", "note_to_payer", "/note_to_payer")
        rid = self._id()
        refund = {
            "id": rid,
            "status": "COMPLETED",
            "amount": {"currency_code": currency, "value": _text(amount, currency)},
            "note_to_payer": note,
            "seller_payable_breakdown": {
                "total_refunded_amount": {
                    "currency_code": currency,
                    "value": _text(done + amount, currency),
                }
            },
            "create_time": self._now(),
            "links": [
                self._link(f"/v2/payments/refunds/{rid}", "self"),
                self._link(f"/v2/payments/captures/{capture['id']}", "up"),
            ],
            "capture": capture["id"],  # the fake's own bookkeeping (removed below)
        }
        self.refunds[rid] = refund
        capture["status"] = "REFUNDED" if done + amount == paid else "PARTIALLY_REFUNDED"
        return 201, {k: v for k, v in refund.items() if k != "capture"}

    # -- subscriptions --------------------------------------------------------------

    def create_subscription(self, p: dict[str, Any], _: Any) -> tuple[int, dict[str, Any]]:
        plan = self.plans.get(str(p.get("plan_id")))
        if plan is None:
            raise PayPalError(
                422, "INVALID_RESOURCE_ID", "Requested resource ID was not found.", "/plan_id"
            )
        custom = p.get("custom_id")
        if custom is not None and not 1 <= len(str(custom)) <= 127:
            raise PayPalError(400, "INVALID_STRING_LENGTH", "custom_id", "/custom_id")
        context = p.get("application_context") or {}
        for name in ("return_url", "cancel_url"):
            if name in context and not re.match(r"^https?://", str(context[name])):
                raise PayPalError(
                    400, "INVALID_PARAMETER_SYNTAX", name, f"/application_context/{name}"
                )
        sid = "I-" + self._id(length=12)
        token = "BA-" + self._id(length=17)
        sub = {
            "id": sid,
            "status": "APPROVAL_PENDING",
            "plan_id": p["plan_id"],
            "quantity": str(p.get("quantity", "1")),
            "custom_id": custom,
            "create_time": self._now(),
            "links": [
                {
                    "href": f"https://www.sandbox.paypal.com/webapps/billing/subscriptions?ba_token={token}",
                    "rel": "approve",
                    "method": "GET",
                },
                self._link(f"/v1/billing/subscriptions/{sid}", "edit", "PATCH"),
                self._link(f"/v1/billing/subscriptions/{sid}", "self"),
            ],
        }
        self.subscriptions[sid] = sub
        return 201, sub

    def get_subscription(self, _: dict[str, Any], match: Any) -> tuple[int, dict[str, Any]]:
        sub = self.subscriptions.get(match["id"])
        if sub is None:
            raise PayPalError(404, "INVALID_RESOURCE_ID", f"subscription {match['id']}")
        return 200, sub

    # -- what happens on PayPal's side, as webhook events ---------------------------

    def event(
        self, event_type: str, resource: dict[str, Any], resource_type: str
    ) -> dict[str, Any]:
        event = {
            "id": "WH-" + self._id(length=17) + "-" + self._id(length=17),
            "event_version": "1.0",
            "create_time": self._now(),
            "resource_type": resource_type,
            "resource_version": "2.0",
            "event_type": event_type,
            "summary": event_type.replace(".", " ").lower(),
            "resource": copy.deepcopy(resource),
            "links": [self._link("/v1/notifications/webhooks-events/x", "self")],
        }
        self.events.append(event)
        return event

    def approve(self, order_id: str) -> dict[str, Any]:
        """The buyer approves the order on PayPal: CHECKOUT.ORDER.APPROVED."""
        order = self._order(order_id)
        if order["status"] not in ("CREATED", "PAYER_ACTION_REQUIRED"):
            raise ValueError(f"order {order_id} is {order['status']}")
        order["status"] = "APPROVED"
        order["payer"] = {"email_address": "buyer@example.com", "payer_id": "QYR5Z8XDVJNXQ"}
        return self.event("CHECKOUT.ORDER.APPROVED", order, "checkout-order")

    def void(self, order_id: str) -> dict[str, Any]:
        order = self._order(order_id)
        order["status"] = "VOIDED"
        return self.event("CHECKOUT.ORDER.VOIDED", order, "checkout-order")

    def captured(self, order_id: str) -> dict[str, Any]:
        """PAYMENT.CAPTURE.COMPLETED for the order's capture (after habla captured it)."""
        [capture] = self._order(order_id)["purchase_units"][0]["payments"]["captures"]
        return self.event("PAYMENT.CAPTURE.COMPLETED", capture, "capture")

    def refunded(self, capture_id: str) -> dict[str, Any]:
        """PAYMENT.CAPTURE.REFUNDED for the last refund of the capture."""
        refund = [r for r in self.refunds.values() if r["capture"] == capture_id][-1]
        return self.event(
            "PAYMENT.CAPTURE.REFUNDED",
            {k: v for k, v in refund.items() if k != "capture"},
            "refund",
        )

    def activate(self, subscription_id: str) -> dict[str, Any]:
        """The buyer approves the subscription and the first payment is taken."""
        sub = self.subscriptions[subscription_id]
        plan = self.plans[sub["plan_id"]]
        sub["status"] = "ACTIVE"
        sub["billing_info"] = {"last_payment": {"amount": dict(plan), "time": self._now()}}
        return self.event("BILLING.SUBSCRIPTION.ACTIVATED", sub, "subscription")

    def sale(self, subscription_id: str) -> dict[str, Any]:
        """PAYMENT.SALE.COMPLETED of a subscription's payment (v1 sale shape)."""
        sub = self.subscriptions[subscription_id]
        plan = self.plans[sub["plan_id"]]
        sale = {
            "id": self._id(),
            "state": "completed",
            "amount": {"total": plan["value"], "currency": plan["currency_code"]},
            "billing_agreement_id": subscription_id,
            "custom": sub.get("custom_id"),
            "create_time": self._now(),
        }
        return self.event("PAYMENT.SALE.COMPLETED", sale, "sale")

    def signed(
        self,
        event: dict[str, Any],
        *,
        webhook_id: str | None = None,
        cert_url: str | None = None,
        sent: dt.datetime | None = None,
        key: rsa.RSAPrivateKey | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the delivery PayPal would POST for ``event``."""
        body = json.dumps(event, indent=1).encode()
        transmission_id = str(uuid.uuid4())
        when = sent or dt.datetime.now(dt.timezone.utc)
        transmission_time = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        hook = self.webhook_id if webhook_id is None else webhook_id
        message = f"{transmission_id}|{transmission_time}|{hook}|{zlib.crc32(body)}"
        signature = (key or self.key).sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
        return body, {
            "Content-Type": "application/json",
            "User-Agent": "PayPal/AUHD-214.0-58302058",
            "PAYPAL-TRANSMISSION-ID": transmission_id,
            "PAYPAL-TRANSMISSION-TIME": transmission_time,
            "PAYPAL-TRANSMISSION-SIG": base64.b64encode(signature).decode(),
            "PAYPAL-CERT-URL": cert_url
            or f"{self.url}/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77",
            "PAYPAL-AUTH-ALGO": "SHA256withRSA",
        }
