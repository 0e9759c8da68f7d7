"""PayPal Checkout (Orders v2) and Subscriptions over PayPal's REST API, with aiohttp.

PayPal's official SDK (``paypal-server-sdk``) cannot be installed beside Rasa 3.6: its
pins conflict with the python-dateutil and jsonpickle Rasa needs. So this adapter
speaks the documented REST API itself, through one aiohttp session.

- **Credentials.** OAuth2 client credentials (``PAYPAL_CLIENT_ID``,
  ``PAYPAL_CLIENT_SECRET``, from the environment, never logged) buy an access token at
  ``POST /v1/oauth2/token``; it is cached until shortly before it expires, fetched by
  one caller at a time (the others wait for it), and fetched again once when PayPal
  answers 401 (revoked or rotated). A 401 from the token endpoint itself is permanent.
- **Checkout.** One order per habla order: ``POST /v2/checkout/orders`` with
  ``intent=CAPTURE``, amounts in PayPal's decimal strings (``"39.90"``; ``"1200"`` for
  JPY, HUF and TWD, which PayPal takes without decimals), the items and their total,
  and ``payment_source.paypal.experience_context`` with the return and cancel URLs.
  The buyer's link is the order's ``payer-action`` (or ``approve``) link. A recurring
  product is a subscription, ``POST /v1/billing/subscriptions``, with the PayPal plan
  the catalog names (``paypal_plan``); PayPal plans carry their own price.
- **Ids.** ``purchase_units[0].custom_id`` is habla's order id: PayPal copies it onto
  the captures, so every payment event names the order. ``reference_id`` is the
  conversation id (on the order resource only; habla finds the conversation through
  the order anyway). ``invoice_id`` is not used: PayPal refuses an invoice id twice
  for ever, which would make a new checkout for the same order impossible.
- **Idempotency.** Every write carries ``PayPal-Request-Id`` = habla's idempotency
  key: PayPal answers a repeat with the resource the first request created.
- **Capture.** PayPal does not take the money when the buyer approves. The webhook
  ``CHECKOUT.ORDER.APPROVED`` decodes to an "approved" event; ``commerce/service.py``
  stores a capture job in the outbox before the webhook answers 200, the server's
  outbox loop runs it at once (``POST /v2/checkout/orders/{id}/capture``, the same
  ``PayPal-Request-Id`` on every try, ``ORDER_ALREADY_CAPTURED`` counted as done) and
  retries it with backoff while PayPal is down. ``PAYMENT.CAPTURE.COMPLETED`` then
  makes the order paid.
- **Webhooks** are verified offline, as PayPal documents: the CRC32 of the raw body,
  ``transmission_id|transmission_time|webhook_id|crc32`` signed SHA256withRSA with
  the certificate at ``PAYPAL-CERT-URL``, fetched only over https from a PayPal host
  (or from the configured API base, which is PayPal's unless overridden for tests) and
  cached. A transmission older (or further ahead) than the tolerance is refused.
  No ``PAYPAL_WEBHOOK_ID``: every delivery is refused.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote, urlparse

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from commerce.catalog import from_minor, minor_units
from commerce.payments.base import (
    CheckoutLink,
    EventType,
    LineItem,
    PaymentEvent,
    Payments,
    Refund,
    WebhookSignatureError,
    catalog_ids,
    check_items,
    header,
)
from runtime.errors import HablaError, error_for_status
from runtime.retry import PermanentError, TransientError
from runtime.settings import Settings

logger = logging.getLogger(__name__)

API_BASES = {"sandbox": "https://api-m.sandbox.paypal.com", "live": "https://api-m.paypal.com"}
# PayPal's REST currencies (developer.paypal.com/api/rest/reference/currency-codes/)
CURRENCIES = frozenset(
    "AUD BRL CAD CNY CZK DKK EUR HKD HUF ILS JPY MYR MXN TWD NZD NOK PHP PLN GBP SGD SEK "
    "CHF THB USD".split()
)
NO_DECIMALS = frozenset({"HUF", "JPY", "TWD"})  # "this currency does not support decimals"
TOKEN_MARGIN_S = 120.0  # a token is renewed this long before PayPal says it expires
CERT_CACHE = 16
_REF = re.compile(r"^[A-Za-z0-9-]{1,64}$")
SIGNATURE_HEADERS = (
    "PAYPAL-TRANSMISSION-ID",
    "PAYPAL-TRANSMISSION-TIME",
    "PAYPAL-TRANSMISSION-SIG",
    "PAYPAL-CERT-URL",
    "PAYPAL-AUTH-ALGO",
)


def paypal_amount(minor: int, currency: str) -> str:
    """An amount in minor units as PayPal's decimal string: 3990 EUR -> "39.90",
    1200 JPY -> "1200"; HUF and TWD in whole units only."""
    code = currency.upper()
    if code not in CURRENCIES:
        raise PermanentError(f"paypal: PayPal does not take {code}")
    value = from_minor(minor, code)
    if code in NO_DECIMALS:
        if value != value.to_integral_value():
            raise PermanentError(f"paypal: {code} amounts must be whole ({value} is not)")
        return f"{value:.0f}"
    return f"{value:.{minor_units(code)}f}"


def minor_amount(value: Any, currency: Any) -> int:
    """PayPal's decimal string back in minor units ("39.90" EUR -> 3990); 0 when absent."""
    if value in (None, ""):
        return 0
    try:
        exact = Decimal(str(value)).scaleb(minor_units(str(currency or "")))
    except InvalidOperation as e:
        raise ValueError(f"not an amount: {value!r}") from e
    if exact != exact.to_integral_value():
        raise ValueError(f"{value} {currency} is not a whole number of minor units")
    return int(exact)


def paypal_error(what: str, status: int, body: Mapping[str, Any], retry_after: str) -> HablaError:
    """PayPal's error body (``{"name", "message", "details": [{"issue"}], "debug_id"}``,
    or OAuth's ``{"error", "error_description"}``) as a transient or permanent error."""
    name = str(body.get("name") or body.get("error") or "")
    issues = [
        str(d.get("issue"))
        for d in body.get("details") or ()
        if isinstance(d, dict) and d.get("issue")
    ]
    text = f"paypal {what}: {status} {name}".rstrip()
    if issues:
        text += f" [{', '.join(issues)}]"
    message = body.get("message") or body.get("error_description")
    if message:
        text += f": {message}"
    if body.get("debug_id"):
        text += f" (debug_id {body['debug_id']})"
    if status == 409:  # the same PayPal-Request-Id is still being processed
        return TransientError(text)
    return error_for_status(status, text, retry_after or None)


class PayPalPayments(Payments):
    name = "paypal"
    event_type_field = "event_type"

    @classmethod
    def missing_secrets(cls, settings: Settings) -> list[str]:
        c = settings.commerce
        pairs = (
            ("PAYPAL_CLIENT_ID", c.paypal_client_id),
            ("PAYPAL_CLIENT_SECRET", c.paypal_client_secret),
            ("PAYPAL_WEBHOOK_ID", c.paypal_webhook_id),
        )
        return [name for name, value in pairs if not value]

    @classmethod
    def from_settings(cls, settings: Settings) -> PayPalPayments:
        c = settings.commerce
        plans = catalog_ids(settings, "paypal_plan")  # what recurring products are sold with
        return cls(
            client_id=c.paypal_client_id,
            client_secret=c.paypal_client_secret,
            webhook_id=c.paypal_webhook_id,
            api_base=c.paypal_api_base or API_BASES[c.paypal_env],
            plans=plans,
            tolerance_s=c.paypal_tolerance_s,
            timeout_s=settings.send.timeout_s,
        )

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        webhook_id: str = "",
        api_base: str = API_BASES["live"],
        plans: Mapping[str, str] | None = None,
        tolerance_s: int = 300,
        timeout_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        problems = []
        if not client_id:
            problems.append("client_id (PAYPAL_CLIENT_ID) is empty")
        if not client_secret:
            problems.append("client_secret (PAYPAL_CLIENT_SECRET) is empty")
        parsed = urlparse(api_base)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            problems.append(f"api_base {api_base!r} is not an http(s) URL")
        if tolerance_s <= 0:
            problems.append("tolerance_s must be positive (webhooks would never go stale)")
        if timeout_s <= 0:
            problems.append("timeout_s must be positive")
        if problems:
            raise ValueError("PayPalPayments: " + "; ".join(problems))
        self._auth = aiohttp.BasicAuth(client_id, client_secret)
        self.webhook_id = webhook_id
        self.api_base = api_base.rstrip("/")
        self._origin = f"{parsed.scheme}://{parsed.netloc}".lower()
        self.plans = dict(plans or {})
        self.tolerance_s = tolerance_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.clock = clock
        self._session = session
        self._owns_session = session is None
        self._token: tuple[str, float] = ("", 0.0)  # (access token, monotonic expiry)
        self._token_lock = asyncio.Lock()
        self._certs: dict[str, tuple[rsa.RSAPublicKey, float]] = {}
        self._cert_lock = asyncio.Lock()

    def webhook_missing(self) -> list[str]:
        return [] if self.webhook_id else ["PAYPAL_WEBHOOK_ID"]

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- HTTP -----------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def _send(
        self, what: str, method: str, url: str, **kw: Any
    ) -> tuple[int, dict[str, Any], str]:
        """(status, JSON body or {}, Retry-After); network failures are transient."""
        try:
            async with self._http().request(method, url, timeout=self.timeout, **kw) as resp:
                text = await resp.text()
                status, retry_after = resp.status, resp.headers.get("Retry-After", "")
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise TransientError(f"paypal {what}: {type(e).__name__} {e}".rstrip()) from e
        try:
            body = json.loads(text) if text.strip() else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if status < 400 and not body and method != "GET" and text.strip():
            raise TransientError(f"paypal {what}: {status} with a body that is not JSON")
        return status, body, retry_after

    async def _access_token(self, refused: str = "") -> str:
        """The cached token, else a new one (one request however many callers wait);
        ``refused``: a token PayPal just answered 401 to, never handed out again."""
        async with self._token_lock:
            token, expires = self._token
            if token and token != refused and time.monotonic() < expires:
                return token
            status, body, retry_after = await self._send(
                "access token",
                "POST",
                f"{self.api_base}/v1/oauth2/token",
                data={"grant_type": "client_credentials"},
                auth=self._auth,
                headers={"Accept": "application/json"},
            )
            if status != 200 or not isinstance(body.get("access_token"), str):
                raise paypal_error("access token", status, body, retry_after)
            lifetime = float(body.get("expires_in") or 0)
            self._token = (body["access_token"], time.monotonic() + lifetime - TOKEN_MARGIN_S)
            return str(body["access_token"])

    async def _call(
        self,
        what: str,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        request_id: str = "",
        accept: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """One API call with the bearer token (fetched again once on 401); an error
        whose issue is in ``accept`` answers ``{}`` instead of raising."""
        token = await self._access_token()
        headers = {"Accept": "application/json", "Prefer": "return=representation"}
        if request_id:
            headers["PayPal-Request-Id"] = request_id
        for attempt in (1, 2):
            status, answer, retry_after = await self._send(
                what,
                method,
                self.api_base + path,
                json=body,
                headers=headers | {"Authorization": f"Bearer {token}"},
            )
            if status == 401 and attempt == 1:
                token = await self._access_token(refused=token)
                continue
            if status < 400:
                return answer
            issues = {d.get("issue") for d in answer.get("details") or () if isinstance(d, dict)}
            if issues & set(accept):
                return {}
            raise paypal_error(what, status, answer, retry_after)
        raise AssertionError("unreachable")

    # -- API calls ------------------------------------------------------------------

    async def create_checkout(
        self,
        order_id: str,
        conversation_id: str,
        items: Sequence[LineItem],
        *,
        customer_email: str = "",
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
        expires_at: float = 0,
    ) -> CheckoutLink:
        """``expires_at`` is not sent: PayPal orders have no expiry parameter (an order
        nobody approves is voided by PayPal: ``CHECKOUT.ORDER.VOIDED``)."""
        check_items(items)
        if not 0 < len(order_id) <= 127:
            raise PermanentError(f"paypal: order id {order_id!r} does not fit custom_id")
        if any(i.recurring_interval for i in items):
            return await self._subscribe(
                order_id, items, customer_email, success_url, cancel_url, idempotency_key
            )
        currency = items[0].currency.upper()
        total = paypal_amount(sum(i.total_minor for i in items), currency)
        unit = {
            "reference_id": conversation_id[:256] or "default",
            "custom_id": order_id,
            "amount": {
                "currency_code": currency,
                "value": total,
                "breakdown": {"item_total": {"currency_code": currency, "value": total}},
            },
            "items": [
                {
                    "name": i.name[:127],
                    "sku": i.sku[:127],
                    "quantity": str(i.quantity),
                    "unit_amount": {
                        "currency_code": currency,
                        "value": paypal_amount(i.unit_amount_minor, currency),
                    },
                }
                for i in items
            ],
        }
        source: dict[str, Any] = {
            "experience_context": {
                "return_url": success_url,
                "cancel_url": cancel_url,
                "user_action": "PAY_NOW",
            }
        }
        if customer_email:
            source["email_address"] = customer_email
        order = await self._call(
            "create order",
            "POST",
            "/v2/checkout/orders",
            {"intent": "CAPTURE", "purchase_units": [unit], "payment_source": {"paypal": source}},
            request_id=idempotency_key,
        )
        return CheckoutLink(str(order.get("id", "")), _link(order, "create order"), 0.0)

    async def _subscribe(
        self,
        order_id: str,
        items: Sequence[LineItem],
        customer_email: str,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
    ) -> CheckoutLink:
        if len(items) != 1:
            raise PermanentError("paypal: a subscription is one recurring product on its own")
        item = items[0]
        plan = self.plans.get(item.sku)
        if not plan:
            raise PermanentError(
                f"paypal: product {item.sku!r} recurs but has no PayPal plan "
                "(paypal_plan: P-... in the catalog)"
            )
        body: dict[str, Any] = {
            "plan_id": plan,
            "custom_id": order_id,
            "application_context": {
                "return_url": success_url,
                "cancel_url": cancel_url,
                "user_action": "SUBSCRIBE_NOW",
                "shipping_preference": "NO_SHIPPING",
            },
        }
        if item.quantity > 1:
            body["quantity"] = str(item.quantity)
        if customer_email:
            body["subscriber"] = {"email_address": customer_email}
        sub = await self._call(
            "create subscription",
            "POST",
            "/v1/billing/subscriptions",
            body,
            request_id=idempotency_key,
        )
        return CheckoutLink(str(sub.get("id", "")), _link(sub, "create subscription"), 0.0)

    async def capture(self, checkout_ref: str, *, idempotency_key: str) -> str:
        """Capture an approved order; the capture id ("" when it was captured before,
        by an earlier request whose answer was lost)."""
        order = await self._call(
            "capture order",
            "POST",
            f"/v2/checkout/orders/{_ref(checkout_ref)}/capture",
            {},
            request_id=idempotency_key,
            accept=("ORDER_ALREADY_CAPTURED",),
        )
        for unit in order.get("purchase_units") or ():
            for capture in (unit.get("payments") or {}).get("captures") or ():
                return str(capture.get("id", ""))
        return ""

    async def refund(
        self,
        payment_ref: str,
        amount_minor: int | None = None,
        *,
        reason: str = "requested_by_customer",
        idempotency_key: str,
    ) -> Refund:
        if payment_ref.startswith("I-"):
            raise PermanentError(
                f"paypal: {payment_ref} is a subscription; refund its payments in PayPal"
            )
        ref = _ref(payment_ref)
        body: dict[str, Any] = {"note_to_payer": reason.replace("_", " ")[:255]}
        if amount_minor is not None:  # a partial refund needs the capture's currency
            capture = await self._call("read capture", "GET", f"/v2/payments/captures/{ref}")
            currency = str((capture.get("amount") or {}).get("currency_code", ""))
            body["amount"] = {
                "currency_code": currency,
                "value": paypal_amount(amount_minor, currency),
            }
        refund = await self._call(
            "refund",
            "POST",
            f"/v2/payments/captures/{ref}/refund",
            body,
            request_id=idempotency_key,
        )
        amount = refund.get("amount") or {}
        return Refund(
            str(refund.get("id", "")),
            str(refund.get("status", "")),
            minor_amount(amount.get("value"), amount.get("currency_code")),
        )

    # -- webhooks -------------------------------------------------------------------

    async def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> PaymentEvent | None:
        if not self.webhook_id:
            raise WebhookSignatureError("no PayPal webhook id is configured (PAYPAL_WEBHOOK_ID)")
        values = {name: header(headers, name).strip() for name in SIGNATURE_HEADERS}
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise WebhookSignatureError(f"missing {', '.join(missing)}")
        if values["PAYPAL-AUTH-ALGO"] != "SHA256withRSA":
            raise WebhookSignatureError(f"unknown PAYPAL-AUTH-ALGO {values['PAYPAL-AUTH-ALGO']!r}")
        sent = values["PAYPAL-TRANSMISSION-TIME"]
        try:
            when = datetime.fromisoformat(sent.replace("Z", "+00:00"))
        except ValueError:
            raise WebhookSignatureError(
                f"PAYPAL-TRANSMISSION-TIME {sent!r} is not a time"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        age = self.clock() - when.timestamp()
        if abs(age) > self.tolerance_s:
            raise WebhookSignatureError(
                f"transmission is {age:.0f} s old (tolerance {self.tolerance_s} s)"
            )
        try:
            signature = base64.b64decode(values["PAYPAL-TRANSMISSION-SIG"], validate=True)
        except (binascii.Error, ValueError):
            raise WebhookSignatureError("PAYPAL-TRANSMISSION-SIG is not base64") from None
        key = await self._certificate_key(values["PAYPAL-CERT-URL"])
        signed = "|".join(
            (values["PAYPAL-TRANSMISSION-ID"], sent, self.webhook_id, str(zlib.crc32(body)))
        )
        try:
            key.verify(signature, signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise WebhookSignatureError("bad signature") from None
        try:
            event = json.loads(body)
            parse = EVENTS.get(str(event.get("event_type", "")))
            resource = event.get("resource")
            if parse is None or not isinstance(resource, dict):
                return None
            return parse(str(event["id"]), str(event["event_type"]), resource)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise ValueError(f"paypal webhook: a signed but malformed event: {e!r}") from e

    def _cert_allowed(self, url: str) -> bool:
        """https on a PayPal host, or the configured API base (PayPal's in production;
        a local fake's in tests: habla already trusts it with the client secret)."""
        parsed = urlparse(url)
        host = (parsed.hostname or "").lower()
        if parsed.scheme == "https" and (host == "paypal.com" or host.endswith(".paypal.com")):
            return True
        return f"{parsed.scheme}://{parsed.netloc}".lower() == self._origin

    async def _certificate_key(self, url: str) -> rsa.RSAPublicKey:
        if not self._cert_allowed(url):
            raise WebhookSignatureError(f"PAYPAL-CERT-URL is not on a PayPal host: {url[:200]!r}")
        now = self.clock()
        cached = self._certs.get(url)
        if cached is not None and now < cached[1]:
            return cached[0]
        async with self._cert_lock:  # one download per certificate
            cached = self._certs.get(url)
            if cached is not None and now < cached[1]:
                return cached[0]
            try:
                async with self._http().get(url, timeout=self.timeout) as resp:
                    pem, status = await resp.read(), resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                raise TransientError(f"paypal certificate: {type(e).__name__} {e}") from e
            if status != 200:
                if status == 429 or status >= 500:
                    raise TransientError(f"paypal certificate: {status}")
                raise WebhookSignatureError(f"the certificate URL answered {status}")
            try:
                cert = x509.load_pem_x509_certificate(pem)
            except ValueError:
                raise WebhookSignatureError("PAYPAL-CERT-URL is not a PEM certificate") from None
            not_before = cert.not_valid_before_utc.timestamp()
            not_after = cert.not_valid_after_utc.timestamp()
            if not not_before <= now <= not_after:
                raise WebhookSignatureError("the signing certificate is not valid now")
            key = cert.public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                raise WebhookSignatureError("the signing certificate's key is not RSA")
            if len(self._certs) >= CERT_CACHE:
                self._certs.pop(next(iter(self._certs)))
            self._certs[url] = (key, not_after)
            return key


def _ref(value: str) -> str:
    """A PayPal resource id, safe in a URL path."""
    if not _REF.match(value):
        raise PermanentError(f"paypal: {value[:80]!r} is not a PayPal id")
    return quote(value)


def _link(resource: Mapping[str, Any], what: str) -> str:
    """Where the buyer approves: the ``payer-action`` or ``approve`` HATEOAS link."""
    for link in resource.get("links") or ():
        if isinstance(link, dict) and link.get("rel") in ("payer-action", "approve"):
            return str(link["href"])
    raise PermanentError(f"paypal {what}: {resource.get('id')} has no approval link")


def _amount(obj: Mapping[str, Any]) -> tuple[int, str]:
    amount = obj.get("amount") or {}
    currency = str(amount.get("currency_code") or amount.get("currency") or "").upper()
    value = amount.get("value", amount.get("total"))
    return minor_amount(value, currency), currency


Parser = Callable[[str, str, Mapping[str, Any]], PaymentEvent | None]


def _order(kind: EventType, reason: str = "") -> Parser:
    """CHECKOUT.ORDER.*: the resource is the order."""

    def parse(event_id: str, raw_type: str, order: Mapping[str, Any]) -> PaymentEvent | None:
        if kind == "approved" and order.get("status") not in (None, "APPROVED"):
            return None  # captured already (a late or replayed approval)
        unit = (order.get("purchase_units") or [{}])[0]
        amount, currency = _amount(unit)
        return PaymentEvent(
            event_id=event_id,
            type=kind,
            order_id=str(unit.get("custom_id") or ""),
            conversation_id=str(unit.get("reference_id") or ""),
            amount_minor=amount,
            currency=currency,
            provider_ref=str(order["id"]),
            reason=reason,
            raw_type=raw_type,
        )

    return parse


def _capture(kind: EventType, reason: str = "") -> Parser:
    """PAYMENT.CAPTURE.*: the resource is the capture, with the order's custom_id."""

    def parse(event_id: str, raw_type: str, cap: Mapping[str, Any]) -> PaymentEvent | None:
        if kind == "paid" and cap.get("status") != "COMPLETED":
            return None
        related = (cap.get("supplementary_data") or {}).get("related_ids") or {}
        amount, currency = _amount(cap)
        details = (cap.get("status_details") or {}).get("reason")
        return PaymentEvent(
            event_id=event_id,
            type=kind,
            order_id=str(cap.get("custom_id") or ""),
            conversation_id="",
            amount_minor=amount,
            currency=currency,
            # paid: the refundable capture; failed: the order, which the buyer may retry
            provider_ref=str(cap["id"] if kind == "paid" else related.get("order_id") or cap["id"]),
            reason=str(details or reason),
            raw_type=raw_type,
        )

    return parse


def _refunded(event_id: str, raw_type: str, refund: Mapping[str, Any]) -> PaymentEvent:
    """PAYMENT.CAPTURE.REFUNDED: the resource is the refund; its ``up`` link is the
    capture (the order's payment_ref once paid)."""
    capture = ""
    for link in refund.get("links") or ():
        if isinstance(link, dict) and link.get("rel") == "up":
            capture = str(link.get("href", "")).rstrip("/").rsplit("/", 1)[-1]
    amount, currency = _amount(refund)
    return PaymentEvent(
        event_id=event_id,
        type="refunded",
        order_id=str(refund.get("custom_id") or ""),
        conversation_id="",
        amount_minor=amount,
        currency=currency,
        provider_ref=capture or str(refund["id"]),
        reason="",
        raw_type=raw_type,
    )


def _subscription(kind: EventType, reason: str = "") -> Parser:
    """BILLING.SUBSCRIPTION.*: the resource is the subscription."""

    def parse(event_id: str, raw_type: str, sub: Mapping[str, Any]) -> PaymentEvent:
        last = (sub.get("billing_info") or {}).get("last_payment") or {}
        amount, currency = _amount(last)
        return PaymentEvent(
            event_id=event_id,
            type=kind,
            order_id=str(sub.get("custom_id") or ""),
            conversation_id="",
            amount_minor=amount,
            currency=currency,
            provider_ref=str(sub["id"]),
            reason=reason,
            raw_type=raw_type,
        )

    return parse


def _sale_completed(event_id: str, raw_type: str, sale: Mapping[str, Any]) -> PaymentEvent | None:
    """PAYMENT.SALE.COMPLETED (v1 shape): a subscription's payment; others are ignored."""
    subscription = sale.get("billing_agreement_id")
    if not subscription:
        return None
    amount, currency = _amount(sale)
    return PaymentEvent(
        event_id=event_id,
        type="paid",
        order_id=str(sale.get("custom") or sale.get("custom_id") or ""),
        conversation_id="",
        amount_minor=amount,
        currency=currency,
        provider_ref=str(subscription),
        reason="",
        raw_type=raw_type,
    )


EVENTS: dict[str, Parser] = {
    "CHECKOUT.ORDER.APPROVED": _order("approved"),
    "CHECKOUT.ORDER.VOIDED": _order("expired"),
    "PAYMENT.CAPTURE.COMPLETED": _capture("paid"),
    "PAYMENT.CAPTURE.DENIED": _capture("failed", "payment denied"),
    "PAYMENT.CAPTURE.DECLINED": _capture("failed", "payment declined"),
    "PAYMENT.CAPTURE.REFUNDED": _refunded,
    "BILLING.SUBSCRIPTION.ACTIVATED": _subscription("paid"),
    "BILLING.SUBSCRIPTION.PAYMENT.FAILED": _subscription("failed", "subscription payment failed"),
    "PAYMENT.SALE.COMPLETED": _sale_completed,
}
