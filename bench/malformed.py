"""Hostile requests for every webhook path: what a scanner, a broken proxy or an
attacker with a leaked signing secret could send. Used by the reliability bench and
``tests/test_faults.py`` against the whole cluster.

:func:`requests` yields ``count`` requests, deterministic for a seed, spread evenly over
the kinds in :data:`KINDS`; each is sent through the load balancer with a deadline.
:func:`raw_requests` are bytes no HTTP client would send (broken request lines,
headers, chunking), written to a server's socket directly (HAProxy would refuse most of
them itself). A server must answer each with a 4xx (or 200 for what it may ignore),
never a 5xx, never hang, and log it as one line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

TWILIO_PATHS = (
    "/webhooks/twilio/webhook",
    "/webhooks/twilio/status",
    "/webhooks/twilio_voice/webhook",
    "/webhooks/twilio_voice/status",
)
CLOUD_PATH = "/webhooks/whatsapp/webhook"
REST_PATH = "/webhooks/rest/webhook"
STRIPE_PATH = "/webhooks/stripe/webhook"
BAD_UTF8 = (b"\xff", b"\xc3", b"\xed\xa0\x80", b"%FF", b"%C3", b"\x00")
ABSURD = (
    "-1",
    "1e400",
    "999999999999999999999999",
    "NaN",
    "0x10",
    "",
    " ",
    "٣",
    "1" * 5000,
    "\u202e",
    "🙂" * 300,
    "a" * 20000,
)


@dataclass
class Request:
    kind: str
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _twilio_sign(path: str, form: list[tuple[str, str]]) -> str:
    from tests.conftest import PUBLIC_URL, sign

    return sign(PUBLIC_URL + path, dict(form))


def _form(fields: list[tuple[str, str]]) -> bytes:
    from urllib.parse import urlencode

    return urlencode(fields).encode()


def _cloud_sign(body: bytes) -> str:
    from tests.conftest import WA_APP_SECRET

    return "sha256=" + hmac.new(WA_APP_SECRET.encode(), body, hashlib.sha256).hexdigest()


def _stripe_sign(body: bytes) -> str:
    from tests.conftest import WHSEC
    from tests.fakes.stripe_api import signature_header

    return signature_header(body, WHSEC, int(time.time()))


def _deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _nonsense(rng: random.Random) -> Any:
    """A JSON value of the wrong shape for wherever it lands."""
    return rng.choice(
        [
            None,
            True,
            -1,
            10**30,
            1.5e300,
            "x" * rng.randint(0, 3000),
            [],
            [None] * 50,
            {},
            {"id": None},
            [[[[[]]]]],
            {"0": {"1": {"2": {}}}},
        ]
    )


def _cloud_event(rng: random.Random) -> dict[str, Any]:
    """A Cloud API event whose envelope is right and one part is of the wrong type."""
    from tests.conftest import WA_PHONE_ID

    message: dict[str, Any] = {
        "from": "34600" + str(rng.randint(100000, 999999)),
        "id": f"wamid.FUZZ{rng.getrandbits(48):012x}",
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": "hola"},
    }
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": WA_PHONE_ID},
        "contacts": [{"profile": {"name": "Fuzz"}, "wa_id": message["from"]}],
        "messages": [message],
    }
    event: dict[str, Any] = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }
    target = rng.choice(
        [
            (event, "entry"),
            (event["entry"][0], "changes"),
            (event["entry"][0]["changes"][0], "value"),
            (value, "messages"),
            (value, "contacts"),
            (value, "statuses"),
            (message, "type"),
            (message, "text"),
            (message, "from"),
            (message, "id"),
            (message, "timestamp"),
            (message, "interactive"),
            (message, "audio"),
            (message, "location"),
            (message["text"], "body"),
        ]
    )
    holder, key = target
    holder[key] = _nonsense(rng)
    if key == "type":
        message["type"] = rng.choice(["audio", "interactive", "location", "image", "button"])
    return event


def _twilio(rng: random.Random) -> Request:
    path = rng.choice(TWILIO_PATHS)
    fields = [
        ("MessageSid", f"SM{rng.getrandbits(128):032x}"),
        ("AccountSid", "AC" + "0" * 31 + "1"),
        ("From", "whatsapp:+4477003" + str(rng.randint(10000, 99999))),
        ("To", "whatsapp:+14155238886"),
        ("Body", "hola"),
        ("NumMedia", "0"),
    ]
    if "voice" in path:
        fields += [("CallSid", f"CA{rng.getrandbits(128):032x}"), ("CallStatus", "ringing")]
    mutation = rng.randrange(6)
    if mutation == 0:  # an absurd value in a field the server reads
        name = rng.choice(
            ["NumMedia", "Latitude", "Longitude", "Body", "From", "CallDuration", "SpeechResult"]
        )
        fields.append((name, rng.choice(ABSURD)))
        if name == "NumMedia":
            fields += [(f"MediaUrl{i}", "http://127.0.0.1:9/x") for i in range(rng.randint(0, 5))]
    elif mutation == 1:  # thousands of fields
        fields += [(f"K{i}", "v") for i in range(rng.choice([300, 3000]))]
    elif mutation == 2:  # a field repeated, or empty names
        fields += [("From", "whatsapp:+1"), ("", ""), ("NumMedia", "2")]
    body = _form(fields)
    signature = _twilio_sign(path, fields)
    if mutation == 3:  # invalid UTF-8 and broken escapes: signed over what parses, or not
        body += b"&Body=" + rng.choice(BAD_UTF8)
    elif mutation == 4:  # a broken multipart body
        boundary = "fuzz" + str(rng.randint(0, 999))
        body = f'--{boundary}\r\nContent-Disposition: form-data; name="Body"\r\n\r\nho'.encode()
        return Request(
            "twilio broken multipart",
            "POST",
            path,
            body,
            {
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "X-Twilio-Signature": signature,
            },
        )
    elif mutation == 5:  # a valid signature over bytes that are no form at all
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400)))
        signature = _twilio_sign(path, [])
    return Request(
        f"twilio {mutation}",
        "POST",
        path,
        body,
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        },
    )


def _cloud(rng: random.Random) -> Request:
    mutation = rng.randrange(5)
    if mutation == 0:
        body = json.dumps(_cloud_event(rng)).encode()
    elif mutation == 1:
        body = _deep(rng.choice([100, 1000, 5000]))
    elif mutation == 2:
        body = b'{"object": "whatsapp_business_account", "entry": [' + b"9" * 5000 + b"]}"
    elif mutation == 3:
        body = b'{"entry": "' + rng.choice(BAD_UTF8) + b'"}'
    else:
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": _cloud_sign(body)}
    return Request(f"cloud api {mutation}", "POST", CLOUD_PATH, body, headers)


def _cloud_verify(rng: random.Random) -> Request:
    params = rng.choice(
        [
            "hub.mode=subscribe&hub.verify_token=%FF&hub.challenge=1",
            "hub.mode=subscribe&hub.challenge=" + "9" * 5000,
            "hub.mode=" + "x" * 9000,
            "hub.verify_token=&hub.verify_token=a",
        ]
    )
    return Request("cloud api verify", "GET", f"{CLOUD_PATH}?{params}")


def _rest(rng: random.Random) -> Request:
    body = rng.choice(
        [
            _deep(2000),
            json.dumps({"sender": _nonsense(rng), "message": _nonsense(rng)}).encode(),
            json.dumps({"sender": "u1", "message": "x" * 100_000}).encode(),
            b'{"sender": "u", "message": "' + rng.choice(BAD_UTF8) + b'"}',
            b"[" + b"1," * 20000 + b"1]",
        ]
    )
    headers = {"Content-Type": "application/json", "Authorization": "Bearer rest-token"}
    return Request("rest", "POST", REST_PATH, body, headers)


def _stripe(rng: random.Random) -> Request:
    event = {"id": f"evt_{rng.getrandbits(40):x}", "type": "checkout.session.completed"}
    event["data"] = rng.choice([_nonsense(rng), {"object": _nonsense(rng)}])
    body = rng.choice([json.dumps(event).encode(), _deep(3000), b"9" * 5000])
    headers = {"Content-Type": "application/json", "Stripe-Signature": _stripe_sign(body)}
    if rng.random() < 0.3:
        headers["Stripe-Signature"] = rng.choice(["t=1,v1=00", "", "t=" + "9" * 400, "v1=,t="])
    return Request("stripe", "POST", STRIPE_PATH, body, headers)


def _other(rng: random.Random) -> Request:
    path = rng.choice(
        [
            "/media/" + "..%2F" * 20 + "etc%2Fpasswd",
            "/media/" + "a" * 3000,
            "/media/%FF.ogg",
            "/api/conversations/%FF",
            "/api/orders/" + "9" * 3000,
            "/webhooks/twilio_voice/stream",
            "/webhooks/twilio/webhook",
        ]
    )
    headers = {"Authorization": rng.choice(["Bearer " + "x" * 5000, "Basic %%%", ""])}
    if path.endswith("stream"):
        headers |= {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "99"}
    return Request("other", "GET", path, b"", headers)


def _oversized(rng: random.Random) -> Request:
    """Over the 1 MiB limit (one in ten), or one form field of 200 KB."""
    path = rng.choice([*TWILIO_PATHS, CLOUD_PATH, REST_PATH, STRIPE_PATH])
    if rng.random() < 0.1:
        return Request("oversized", "POST", path, b"a" * (1024 * 1024 + 1), {})
    body = b"Body=" + b"a" * 200_000
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return Request("long field", "POST", path, body, headers)


KINDS = (_twilio, _twilio, _cloud, _cloud, _cloud_verify, _rest, _stripe, _other, _oversized)


def requests(count: int, seed: int = 16) -> Iterator[Request]:
    """``count`` hostile requests, the same ones for the same seed."""
    rng = random.Random(seed)
    for i in range(count):
        yield KINDS[i % len(KINDS)](rng)


def raw_requests() -> list[bytes]:
    """Bytes that are not HTTP, or barely: each is written to a server's socket."""
    post = b"POST /webhooks/twilio/webhook HTTP/1.1\r\nHost: x\r\n"
    return [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"b" * 20000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(500)) + b"\r\n",
        post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        post + b"Content-Length: -5\r\n\r\n",
        post + b"Content-Length: 10\r\nContent-Length: 20\r\n\r\n0123456789",
        post + b"Content-Length: 99999999999999999999\r\n\r\n",
        post + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST /webhooks/rest/webhook HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nHost x\r\n\r\n",
    ]
