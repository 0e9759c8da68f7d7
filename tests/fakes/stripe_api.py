"""A local fake of the Stripe v1 API endpoints habla calls, speaking the wire protocol.

It checks ``Authorization: Bearer <secret key>``, parses form bodies in Stripe's
bracket notation (``line_items[0][price_data][unit_amount]=1990``), validates them
against the API's documented rules, and answers with Stripe-shaped objects or an
``{"error": {"type", "code", "message", "param"}}`` body. Idempotency works like
Stripe's v1 layer: once an endpoint has begun, the status and body are saved under
the ``Idempotency-Key``; the same key with the same parameters replays them with
``Idempotent-Replayed: true``, with other parameters it is a 400 ``idempotency_error``,
and while the first request still runs a 409. Requests rejected before the endpoint
begins (authentication, invalid parameters, a scripted edge failure) save nothing.

The webhook half plays what happens on Stripe's side afterwards (the buyer pays, the
card is declined, the session expires, a refund settles) and builds the signed
``Stripe-Signature: t=...,v1=...`` delivery for it.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.fakes.server import Outage, serve

API_VERSION = "2025-10-29.clover"
INTERVALS = ("day", "week", "month", "year")
REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
MINIMUM_CHARGE = 50  # EUR/USD minor units: Stripe's smallest payment-mode total


class StripeAPIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str = "",
        param: str = "",
        saved: bool = False,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.code, self.param, self.saved = code, param, saved

    def response(self) -> tuple[int, dict[str, Any]]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
        if self.param:
            error["param"] = self.param
        return self.status, {"error": error}


def invalid(message: str, param: str = "", code: str = "parameter_invalid") -> StripeAPIError:
    return StripeAPIError(400, message, code=code, param=param)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    params: dict[str, Any]
    idempotency_key: str
    status: int = 0
    replayed: bool = False
    at: float = field(default_factory=time.time)


@dataclass
class _Saved:
    fingerprint: tuple[Any, ...]
    status: int
    body: bytes


def parse_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding back to nested dicts and lists (indexes become lists)."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        head = key.split("[", 1)[0]
        rest = key[len(head) :]
        parts = [head, *re.findall(r"\[([^\[\]]*)\]", rest)]
        if not head or "".join(f"[{p}]" for p in parts[1:]) != rest:
            raise invalid(f"Invalid parameter name: {key}", key)
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise invalid(f"Invalid parameter: {key} mixes a value and a hash", key)
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise invalid(f"Invalid parameter: {key} mixes a value and a hash", key)
        node[parts[-1]] = value
    return _listify(root, "")


def _listify(node: Any, name: str) -> Any:
    if not isinstance(node, dict):
        return node
    out = {k: _listify(v, f"{name}[{k}]" if name else k) for k, v in node.items()}
    if out and all(k.isdigit() for k in out):
        indexes = sorted(int(k) for k in out)
        if indexes != list(range(len(indexes))):
            raise invalid(f"Invalid array: {name} indexes must be 0..n-1", name)
        return [out[str(i)] for i in indexes]
    return out


def _int(value: Any, param: str, minimum: int | None = None) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise invalid(f"Invalid integer: {value}", param)
    number = int(value)
    if minimum is not None and number < minimum:
        raise invalid(f"This value must be greater than or equal to {minimum}.", param)
    return number


def _hash(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"Invalid hash: {param}", param)
    return value


def _metadata(value: Any, param: str) -> dict[str, str]:
    meta = _hash(value, param)
    if len(meta) > 50:
        raise invalid("You can only specify up to 50 metadata keys.", param)
    for key, text in meta.items():
        if len(key) > 40:
            raise invalid(f"Metadata keys can be at most 40 characters: {key}", param)
        if not isinstance(text, str) or len(text) > 500:
            raise invalid(f"Metadata values can be at most 500 characters: {key}", param)
    return dict(meta)


def _url(value: Any, param: str) -> str:
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value):
        raise invalid("Not a valid URL", param, code="url_invalid")
    return value


def signature_header(payload: bytes, secret: str, timestamp: int) -> str:
    """``t=...,v1=...``: HMAC-SHA256 of ``"{t}.{payload}"`` keyed with the whsec secret."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class FakeStripeAPI:
    def __init__(
        self,
        api_key: str,
        webhook_secret: str = "",
        prices: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """``prices``: price id -> {"unit_amount", "currency", "recurring": interval or ""}."""
        self.api_key, self.webhook_secret = api_key, webhook_secret
        self.prices = prices or {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.session_params: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[Recorded] = []
        self.failures: list[StripeAPIError] = []
        self.down = Outage()
        self.delays: list[float] = []  # seconds the next endpoint runs take, one each
        self._saved: dict[str, _Saved] = {}
        self._running: set[str] = set()
        self._answered = asyncio.Condition()
        self._ids = itertools.count(1)
        self.runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle and scripting ------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/checkout/sessions", self._endpoint(self.create_session))
        app.router.add_get("/v1/checkout/sessions/{id}", self._endpoint(self.get_session))
        app.router.add_post("/v1/refunds", self._endpoint(self.create_refund))
        self.runner, self.url = await serve(app)
        return self.url

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        type: str = "api_error",
        code: str = "",
        message: str = "Something went wrong on Stripe's end.",
        saved: bool = False,
    ) -> None:
        """Fail the next ``n`` authenticated requests. ``saved=False``: in front of the
        idempotency layer (a rate limiter, an edge outage), so a retry with the same key
        runs for real; ``saved=True``: after the endpoint began, so Stripe saves the
        error under the key and replays it."""
        for _ in range(n):
            self.failures.append(StripeAPIError(status, message, type=type, code=code, saved=saved))

    def outage(self, seconds: float, status: int = 503) -> None:
        """Refuse every request for the next ``seconds``, in front of the idempotency
        layer (Stripe's edge down)."""
        self.down.begin(seconds, status)

    async def wait_answered(self, count: int, timeout: float = 10.0) -> None:
        """Until ``count`` requests have been answered (even if the client gave up)."""

        async def reached() -> None:
            async with self._answered:
                await self._answered.wait_for(
                    lambda: sum(1 for r in self.requests if r.status) >= count
                )

        await asyncio.wait_for(reached(), timeout)

    def _id(self, prefix: str) -> str:
        return (
            f"{prefix}_test_{next(self._ids):06d}{hashlib.sha1(prefix.encode()).hexdigest()[:18]}"
        )

    # -- the HTTP layer: auth, scripted failures, idempotency ---------------------------

    def _endpoint(self, handler: Any) -> Any:
        async def endpoint(request: web.Request) -> web.Response:
            body = await request.read()
            key = request.headers.get("Idempotency-Key", "")
            record = Recorded(request.method, request.path, dict(request.headers), {}, key)
            self.requests.append(record)
            if self.down.refuses():
                error = {"type": "api_error", "message": "Stripe is temporarily unavailable."}
                response = self._json(self.down.status, {"error": error})
            else:
                response = await self._serve(request, body, key, record, handler)
            async with self._answered:
                record.status = response.status
                self._answered.notify_all()
            return response

        return endpoint

    async def _serve(
        self, request: web.Request, body: bytes, key: str, record: Recorded, handler: Any
    ) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            shown = request.headers.get("Authorization", "")[7:]
            return self._json(
                401,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "message": f"Invalid API Key provided: {shown[:8]}*********",
                    }
                },
            )
        try:
            if request.method == "POST" and request.content_type not in (
                "application/x-www-form-urlencoded",
                "",
            ):
                raise invalid(f"Invalid request: unsupported Content-Type {request.content_type}")
            params = parse_form(body.decode() if request.method == "POST" else request.query_string)
            record.params = params
            if self.failures and not self.failures[0].saved:
                raise self.failures.pop(0)
            if len(key) > 255:
                raise invalid("Idempotency keys can be at most 255 characters", code="")
        except StripeAPIError as e:
            return self._json(*e.response())

        fingerprint = (request.method, request.path, tuple(sorted(parse_qsl(body.decode()))))
        if request.method == "POST" and key:
            saved = self._saved.get(key)
            if saved is not None:
                if saved.fingerprint != fingerprint:
                    return self._json(
                        400,
                        {
                            "error": {
                                "type": "idempotency_error",
                                "message": "Keys for idempotent requests can only be used with "
                                "the same parameters they were first used with. Try using a "
                                f"key other than '{key}' if you meant to execute a different "
                                "request.",
                            }
                        },
                    )
                record.replayed = True
                return web.Response(
                    status=saved.status,
                    body=saved.body,
                    content_type="application/json",
                    headers={"Idempotent-Replayed": "true", "Idempotency-Key": key},
                )
            if key in self._running:
                return self._json(
                    409,
                    {
                        "error": {
                            "type": "invalid_request_error",
                            "code": "idempotency_key_in_use",
                            "message": "There is currently another in-progress request using "
                            "this Stripe-Idempotency key (that probably means you submitted "
                            "twice, and the other request is still going through).",
                        }
                    },
                )
            self._running.add(key)
        try:
            if self.delays:  # the endpoint is slow: the key stays in use meanwhile
                await asyncio.sleep(self.delays.pop(0))
            if self.failures and self.failures[0].saved:
                status, result = self.failures.pop(0).response()
            else:
                status, result = 200, handler(params, request.match_info)
        except StripeAPIError as e:
            status, result = e.response()
            if not e.saved:
                return self._json(status, result)
        finally:
            self._running.discard(key)
        response = self._json(status, result)
        if request.method == "POST" and key:
            self._saved[key] = _Saved(fingerprint, status, response.body)  # type: ignore[arg-type]
            response.headers["Idempotency-Key"] = key
        return response

    @staticmethod
    def _json(status: int, body: dict[str, Any]) -> web.Response:
        headers = {"Request-Id": f"req_{hashlib.sha1(json.dumps(body).encode()).hexdigest()[:14]}"}
        if status in (429, 500, 503):
            headers["Stripe-Should-Retry"] = "true"
        return web.Response(
            status=status,
            text=json.dumps(body, indent=2),
            content_type="application/json",
            headers=headers,
        )

    # -- endpoints ---------------------------------------------------------------------

    def create_session(self, p: dict[str, Any], _: Any) -> dict[str, Any]:
        mode = p.get("mode")
        if mode is None:
            raise invalid("Missing required param: mode.", "mode", code="parameter_missing")
        if mode not in ("payment", "subscription", "setup"):
            raise invalid("Invalid mode: must be one of payment, setup, or subscription", "mode")
        lines = p.get("line_items")
        if mode != "setup" and not lines:
            raise invalid(
                "You must specify either `line_items` or `mode=setup`.",
                "line_items",
                code="parameter_missing",
            )
        if not isinstance(lines, list):
            raise invalid("Invalid array", "line_items")
        if len(lines) > (20 if mode == "subscription" else 100):
            raise invalid("Too many line items.", "line_items")
        priced = [self._price_line(line, i) for i, line in enumerate(lines)]
        currencies = {c for _, c, _, _ in priced}
        if len(currencies) > 1:
            raise invalid(
                "All prices on a Checkout Session must use the same currency.", "line_items"
            )
        recurring = [r for _, _, _, r in priced if r]
        if mode == "payment" and recurring:
            raise invalid(
                "You specified `payment` mode but passed a recurring price. Either switch to "
                "`subscription` mode or use only one-time prices.",
                "line_items",
            )
        if mode == "subscription" and not recurring:
            raise invalid(
                "You must provide at least one recurring price in `subscription` mode when "
                "using prices.",
                "line_items",
            )
        total = sum(amount * qty for amount, _, qty, _ in priced)
        currency = currencies.pop()
        if mode == "payment" and total < MINIMUM_CHARGE:
            raise invalid(
                f"The Checkout Session's total amount due must add up to at least "
                f"{MINIMUM_CHARGE} {currency}",
                "line_items",
                code="amount_too_small",
            )
        if "payment_intent_data" in p and mode != "payment":
            raise invalid(
                "You can not pass `payment_intent_data` in `" + mode + "` mode.",
                "payment_intent_data",
            )
        if "subscription_data" in p and mode != "subscription":
            raise invalid(
                "You can not pass `subscription_data` in `" + mode + "` mode.", "subscription_data"
            )
        pi_data = _hash(p.get("payment_intent_data"), "payment_intent_data")
        sub_data = _hash(p.get("subscription_data"), "subscription_data")
        pi_meta = _metadata(pi_data.get("metadata"), "payment_intent_data[metadata]")
        sub_meta = _metadata(sub_data.get("metadata"), "subscription_data[metadata]")
        metadata = _metadata(p.get("metadata"), "metadata")
        success_url = _url(p["success_url"], "success_url") if "success_url" in p else None
        cancel_url = _url(p["cancel_url"], "cancel_url") if "cancel_url" in p else None
        now = int(time.time())
        expires_at = now + 86400
        if "expires_at" in p:
            expires_at = _int(p["expires_at"], "expires_at")
            if not now + 1800 <= expires_at <= now + 86400:
                raise invalid(
                    "The `expires_at` timestamp must be between 30 minutes and 24 hours from "
                    "Checkout Session creation.",
                    "expires_at",
                )
        reference = p.get("client_reference_id")
        if reference is not None and not 0 < len(reference) <= 200:
            raise invalid("client_reference_id must be 1 to 200 characters", "client_reference_id")
        email = p.get("customer_email")
        if email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
            raise invalid(f"Invalid email address: {email}", "customer_email", code="email_invalid")
        sid = self._id("cs")
        session = {
            "id": sid,
            "object": "checkout.session",
            "amount_subtotal": total,
            "amount_total": total,
            "cancel_url": cancel_url,
            "client_reference_id": reference,
            "created": now,
            "currency": currency,
            "customer": None,
            "customer_email": email,
            "expires_at": expires_at,
            "invoice": None,
            "livemode": False,
            "metadata": metadata,
            "mode": mode,
            "payment_intent": None,
            "payment_status": "unpaid",
            "status": "open",
            "subscription": None,
            "success_url": success_url,
            "url": f"https://checkout.stripe.com/c/pay/{sid}#fidkdWxOYHwnPyd1blpxYHZxWjA0",
        }
        self.sessions[sid] = session
        self.session_params[sid] = {
            "line_items": lines,
            "payment_intent_metadata": pi_meta,
            "subscription_metadata": sub_meta,
        }
        return session

    def _price_line(self, line: Any, i: int) -> tuple[int, str, int, str]:
        """(unit amount, currency, quantity, recurring interval) of one line item."""
        param = f"line_items[{i}]"
        line = _hash(line, param)
        quantity = _int(line.get("quantity"), f"{param}[quantity]", 1) if "quantity" in line else 0
        if ("price" in line) == ("price_data" in line):
            raise invalid("You must specify either `price` or `price_data`.", param)
        if not quantity:
            raise invalid("Quantity is required.", f"{param}[quantity]", code="parameter_missing")
        if "price" in line:
            price = self.prices.get(line["price"])
            if price is None:
                raise invalid(
                    f"No such price: '{line['price']}'", f"{param}[price]", code="resource_missing"
                )
            return int(price["unit_amount"]), price["currency"], quantity, price["recurring"]
        data = _hash(line["price_data"], f"{param}[price_data]")
        currency = data.get("currency")
        if not isinstance(currency, str) or not re.fullmatch(r"[a-zA-Z]{3}", currency):
            raise invalid(f"Invalid currency: {currency}", f"{param}[price_data][currency]")
        if "unit_amount" not in data:
            raise invalid(
                "Missing required param: unit_amount.",
                f"{param}[price_data][unit_amount]",
                code="parameter_missing",
            )
        amount = _int(data["unit_amount"], f"{param}[price_data][unit_amount]", 0)
        product = _hash(data.get("product_data"), f"{param}[price_data][product_data]")
        if not data.get("product") and not product.get("name"):
            raise invalid(
                "Missing required param: name.",
                f"{param}[price_data][product_data][name]",
                code="parameter_missing",
            )
        _metadata(product.get("metadata"), f"{param}[price_data][product_data][metadata]")
        interval = ""
        if "recurring" in data:
            interval = _hash(data["recurring"], f"{param}[price_data][recurring]").get(
                "interval", ""
            )
            if interval not in INTERVALS:
                raise invalid(
                    f"Invalid interval: {interval}", f"{param}[price_data][recurring][interval]"
                )
        return amount, currency.lower(), quantity, interval

    def get_session(self, _: dict[str, Any], match: Any) -> dict[str, Any]:
        session = self.sessions.get(match["id"])
        if session is None:
            raise StripeAPIError(
                404,
                f"No such checkout.session: '{match['id']}'",
                code="resource_missing",
                param="id",
            )
        return session

    def create_refund(self, p: dict[str, Any], _: Any) -> dict[str, Any]:
        if ("payment_intent" in p) == ("charge" in p):
            raise invalid(
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                code="parameter_missing",
            )
        reason = p.get("reason")
        if reason is not None and reason not in REFUND_REASONS:
            raise invalid(f"Invalid reason: must be one of {', '.join(REFUND_REASONS)}", "reason")
        metadata = _metadata(p.get("metadata"), "metadata")
        amount = _int(p["amount"], "amount", 1) if "amount" in p else None
        if "payment_intent" in p:
            pi = self.payment_intents.get(p["payment_intent"])
            if pi is None:
                raise invalid(
                    f"No such payment_intent: '{p['payment_intent']}'",
                    "payment_intent",
                    code="resource_missing",
                )
            charge = self.charges.get(pi.get("latest_charge") or "")
            if charge is None or pi["status"] != "succeeded":
                raise invalid(
                    "This PaymentIntent does not have a successful charge to refund.",
                    "payment_intent",
                )
        else:
            charge = self.charges.get(p["charge"])
            if charge is None:
                raise invalid(f"No such charge: '{p['charge']}'", "charge", code="resource_missing")
        # the endpoint has begun: from here on errors are saved under the key
        left = charge["amount"] - charge["amount_refunded"]
        if left == 0:
            raise StripeAPIError(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
                saved=True,
            )
        amount = left if amount is None else amount
        if amount > left:
            raise StripeAPIError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                code="amount_too_large",
                param="amount",
                saved=True,
            )
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        refund = {
            "id": self._id("re"),
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "metadata": metadata,
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "status": "succeeded",
        }
        self.refunds[refund["id"]] = refund
        return refund

    # -- what happens on Stripe's side afterwards, as webhook events ------------------

    def event(self, type: str, obj: dict[str, Any]) -> dict[str, Any]:
        event = {
            "id": self._id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": {"object": copy.deepcopy(obj)},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": type,
        }
        self.events.append(event)
        return event

    def _open(self, session_id: str) -> dict[str, Any]:
        session = self.sessions[session_id]
        if session["status"] != "open":
            raise ValueError(f"session {session_id} is {session['status']}, not open")
        return session

    def _intent(self, session: dict[str, Any]) -> dict[str, Any]:
        """The session's PaymentIntent, created on the first confirmation attempt with
        the metadata from ``payment_intent_data``."""
        if session["payment_intent"] is None:
            pi = {
                "id": self._id("pi"),
                "object": "payment_intent",
                "amount": session["amount_total"],
                "currency": session["currency"],
                "latest_charge": None,
                "last_payment_error": None,
                "metadata": dict(self.session_params[session["id"]]["payment_intent_metadata"]),
                "status": "requires_payment_method",
            }
            self.payment_intents[pi["id"]] = pi
            session["payment_intent"] = pi["id"]
        return self.payment_intents[session["payment_intent"]]

    def _charge(self, pi: dict[str, Any]) -> dict[str, Any]:
        """A succeeded charge; Stripe copies the intent's metadata onto it."""
        charge = {
            "id": self._id("ch"),
            "object": "charge",
            "amount": pi["amount"],
            "amount_refunded": 0,
            "currency": pi["currency"],
            "metadata": dict(pi["metadata"]),
            "paid": True,
            "payment_intent": pi["id"],
            "refunded": False,
            "status": "succeeded",
        }
        self.charges[charge["id"]] = charge
        pi["status"], pi["latest_charge"] = "succeeded", charge["id"]
        return charge

    def complete(self, session_id: str, *, delayed: bool = False) -> dict[str, Any]:
        """The buyer pays: checkout.session.completed (``delayed``: with a delayed method,
        still "unpaid" until :meth:`settle`)."""
        session = self._open(session_id)
        session["status"] = "complete"
        if session["mode"] == "subscription":
            session["subscription"] = self._id("sub")
            session["invoice"] = self._id("in")
            session["payment_status"] = "paid"
        else:
            pi = self._intent(session)
            if delayed:
                pi["status"] = "processing"
            else:
                self._charge(pi)
                session["payment_status"] = "paid"
        return self.event("checkout.session.completed", session)

    def settle(self, session_id: str, *, succeeded: bool = True) -> dict[str, Any]:
        """A delayed payment method settles: async_payment_succeeded or _failed."""
        session = self.sessions[session_id]
        pi = self._intent(session)
        if succeeded:
            self._charge(pi)
            session["payment_status"] = "paid"
            return self.event("checkout.session.async_payment_succeeded", session)
        pi["status"] = "requires_payment_method"
        return self.event("checkout.session.async_payment_failed", session)

    def decline(self, session_id: str, message: str = "Your card was declined.") -> dict[str, Any]:
        """A card is declined on the open session: payment_intent.payment_failed."""
        pi = self._intent(self._open(session_id))
        pi["last_payment_error"] = {"code": "card_declined", "message": message}
        return self.event("payment_intent.payment_failed", pi)

    def expire(self, session_id: str) -> dict[str, Any]:
        session = self._open(session_id)
        session["status"] = "expired"
        return self.event("checkout.session.expired", session)

    def refunded(self, payment_ref: str) -> dict[str, Any]:
        """charge.refunded for a charge refunded through the API (by PI or charge id)."""
        pi = self.payment_intents.get(payment_ref)
        charge = self.charges[pi["latest_charge"] if pi else payment_ref]
        if not charge["amount_refunded"]:
            raise ValueError(f"charge {charge['id']} has no refund")
        return self.event("charge.refunded", charge)

    def signed(
        self, event: dict[str, Any], secret: str = "", timestamp: int | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the delivery Stripe would POST for ``event``."""
        body = json.dumps(event, indent=2).encode()
        t = int(time.time()) if timestamp is None else timestamp
        return body, {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": signature_header(body, secret or self.webhook_secret, t),
        }
