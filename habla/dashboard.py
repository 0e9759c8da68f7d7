"""The operator's analytics: ``GET /api/analytics`` (JSON) and the page ``/admin``.

Both need ``HABLA_ADMIN_TOKEN``. The API takes it as ``Authorization: Bearer``; the
page has a login form (``POST /admin/login``) that compares it in constant time and
sets a session cookie: ``<expiry>.<HMAC-SHA256(token, expiry)>``, HttpOnly,
SameSite=Strict, Secure when the page is served over HTTPS (or ``HABLA_PUBLIC_URL`` is
https), valid for :data:`SESSION_S`. The token itself is never in a URL, a cookie or
a log line; changing it ends every session. ``POST /admin/logout`` clears the cookie.
The page is server-rendered HTML with SVG charts (``habla/charts.py``): no script,
every text escaped, and a Content-Security-Policy that would refuse a script anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from html import escape
from typing import Any

from aiohttp import web

from habla import charts
from habla.analytics import BUCKETS, Analytics, Period

COOKIE = "habla_admin"
SESSION_S = 12 * 3600
TOP_INTENTS = 15
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
BUCKET_LABELS = [f"{i / BUCKETS:.1f}" for i in range(BUCKETS)]


class Dashboard:
    def __init__(self, token: str, analytics: Analytics, secure: bool = False) -> None:
        """``secure``: the cookie is always Secure (the public URL is https)."""
        self.token, self.analytics, self.secure = token, analytics, secure

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/analytics", self.api),
            web.get("/admin", self.page),
            web.post("/admin/login", self.login),
            web.post("/admin/logout", self.logout),
        ]

    # ------------------------------------------------------------------ access

    def _sign(self, expires: int) -> str:
        mac = hmac.new(self.token.encode(), f"habla-admin:{expires}".encode(), hashlib.sha256)
        return f"{expires}.{mac.hexdigest()}"

    def _session(self, request: web.Request) -> bool:
        value = request.cookies.get(COOKIE, "")
        expires, _, _ = value.partition(".")
        if not self.token or not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(value.encode(), self._sign(int(expires)).encode())

    def _bearer(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return bool(self.token) and hmac.compare_digest(given.encode(), self.token.encode())

    @staticmethod
    def _period(request: web.Request) -> Period:
        try:
            return Period.parse(request.query.get("from", ""), request.query.get("to", ""))
        except ValueError as e:
            raise web.HTTPBadRequest(text=f"from/to: {e} (YYYY-MM-DD)") from e

    async def api(self, request: web.Request) -> web.Response:
        """Every figure of ``?from=YYYY-MM-DD&to=YYYY-MM-DD`` (both included; default:
        the last 30 days)."""
        if not (self._bearer(request) or self._session(request)):
            raise web.HTTPForbidden(text="missing or wrong admin token")
        return web.json_response(
            await self.analytics.report(self._period(request)),
            headers={"Cache-Control": "no-store"},
        )

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = form.get("token", "")
        if not self.token:
            return _html(
                _login_page("The operator page is closed: HABLA_ADMIN_TOKEN is unset."), 403
            )
        if not isinstance(given, str) or not hmac.compare_digest(
            given.encode(), self.token.encode()
        ):
            return _html(_login_page("Wrong token."), 403)
        response = web.HTTPSeeOther("/admin", headers=HEADERS)
        response.set_cookie(
            COOKIE,
            self._sign(int(time.time()) + SESSION_S),
            max_age=SESSION_S,
            path="/",
            httponly=True,
            secure=self.secure or request.secure,
            samesite="Strict",
        )
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/admin", headers=HEADERS)
        response.del_cookie(COOKIE, path="/")
        raise response

    async def page(self, request: web.Request) -> web.Response:
        if not self._session(request):
            closed = (
                "" if self.token else "The operator page is closed: HABLA_ADMIN_TOKEN is unset."
            )
            return _html(_login_page(closed), 200 if self.token else 403)
        period = self._period(request)
        return _html(render(await self.analytics.report(period)))


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", headers=HEADERS)


STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1em}
figure{margin:0}figcaption{font-weight:600;margin-bottom:.3em}
.chart text{font-size:12px;fill:#222}.chart .small{font-size:10px}.chart .muted{fill:#777}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 6px;
text-align:left;vertical-align:top}.num{text-align:right}.figures{display:flex;gap:1.5em;
flex-wrap:wrap}.figures div{background:#f4f6f9;padding:.5em 1em;border-radius:4px}
.figures b{display:block;font-size:1.4em}form.inline{display:inline}
"""


def _doc(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _login_page(message: str = "") -> str:
    note = f'<p role="alert">{escape(message)}</p>' if message else ""
    return _doc(
        "habla: operator login",
        "<main><h1>habla operator page</h1>"
        f"{note}"
        '<form method="post" action="/admin/login">'
        '<label for="token">Operator token (HABLA_ADMIN_TOKEN)</label><br>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        'required size="40"> <button type="submit">Log in</button></form></main>',
    )


def _figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{escape(caption)}</figcaption>{svg}</figure>"


def _table(caption: str, headers: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return f"<p>{escape(caption)}: none.</p>"
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(str(c))}</td>'
            if isinstance(c, (int, float))
            else f"<td>{escape(str(c))}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><caption>{escape(caption)}</caption><tr>{head}</tr>{body}</table>"


def _figures(items: Mapping[str, Any]) -> str:
    return (
        '<div class="figures">'
        + "".join(f"<div><b>{escape(str(v))}</b>{escape(k)}</div>" for k, v in items.items())
        + "</div>"
    )


def _money(minor: int) -> str:
    return f"{minor / 100:,.2f}"


def render(r: dict[str, Any]) -> str:
    """The page for one report of :meth:`Analytics.report`."""
    period, days = r["period"], r["period"]["days"]
    msgs, intents = r["messages"], r["intents"]
    channels = list(msgs["per_channel"])
    per_channel = {c: [msgs["per_day"].get(d, {}).get(c, 0) for d in days] for c in channels}
    outbound = r["outbound"]
    out_channels = sorted({c for v in outbound["per_day"].values() for c in v})
    out_series = {
        f"{c} (sent)": [outbound["per_day"].get(d, {}).get(c, 0) for d in days]
        for c in out_channels
    }
    conv_series = {"conversations": [r["conversations"]["per_day"].get(d, 0) for d in days]}
    langs = r["languages"]
    top = intents["top"][:TOP_INTENTS]
    rate = {t["intent"]: f"({t['fallbacks']} fell back)" for t in top if t["fallbacks"]}
    voice, calls = r["voice"], r["calls"]
    funnel = r["funnel"]
    funnel_labels = {
        "price_asked": "asked a price",
        "ordered": "ordered",
        "link_sent": "payment link sent",
        "paid": "paid",
        "refunded": "refunded",
    }
    failures = {f["code"]: f["count"] for f in r["delivery_failures"]}
    outbox_bars = {
        f"{kind} {status}": n
        for kind, statuses in sorted(r["outbox"]["by_kind"].items())
        for status, n in statuses.items()
        if status in ("pending", "failed")
    }
    sentiment = r["sentiment"]
    sent_series = {
        label: [sentiment["per_day"].get(d, {}).get(label, 0) for d in days]
        for label in ("negative", "neutral", "positive")
    }
    unavailable = (
        f'<p role="note">Not included (kept outside the embedded SQLite file): '
        f"{escape(', '.join(r['unavailable']))}.</p>"
        if r["unavailable"]
        else ""
    )
    body = [
        "<header><h1>habla analytics</h1>",
        f"<p>{escape(period['from'])} to {escape(period['to'])} (UTC days) "
        f"&middot; queried in {escape(str(r.get('query_ms', '')))} ms</p>",
        '<form method="get" action="/admin" aria-label="Period">'
        f'<label>From <input type="date" name="from" value="{escape(period["from"])}"></label> '
        f'<label>to <input type="date" name="to" value="{escape(period["to"])}"></label> '
        '<button type="submit">Show</button></form> '
        '<form method="post" action="/admin/logout" class="inline">'
        '<button type="submit">Log out</button></form></header><main>',
        unavailable,
        _figures(
            {
                "messages": msgs["total"],
                "conversations": r["conversations"]["total"],
                "fallback rate": f"{intents['fallback_rate'] * 100:.1f}%",
                "voice notes": voice["notes"],
                "call minutes": calls["minutes"],
                "CRM/payment writes pending": r["outbox"]["pending_now"],
            }
        ),
        '<h2>Traffic</h2><div class="grid">',
        _figure(
            "Messages received per day, by channel",
            charts.lines("Messages per day by channel", days, per_channel),
        ),
        _figure(
            "Messages sent per day, by channel",
            charts.lines("Messages sent per day by channel", days, out_series),
        ),
        _figure("Conversations per day", charts.lines("Conversations per day", days, conv_series)),
        _figure("Messages by channel", charts.bars("Messages by channel", msgs["per_channel"])),
        '</div><h2>Languages</h2><div class="grid">',
        _figure(
            "Messages by language (the language decided)",
            charts.bars("Messages by language", langs["messages"]),
        ),
        _figure(
            "Messages by detected language", charts.bars("Detected languages", langs["detected"])
        ),
        _figure(
            "Switches into a language (mid-conversation)",
            charts.bars("Language switches", langs["switched"]),
        ),
        _figure(
            "How the language was decided",
            charts.bars("Language decision reasons", langs["reasons"]),
        ),
        '</div><h2>Intents</h2><div class="grid">',
        _figure(
            f"Top intents (fallback rate {intents['fallback_rate'] * 100:.1f}%)",
            charts.bars("Top intents", {t["intent"]: t["hits"] for t in top}, notes=rate),
        ),
        _figure(
            "NLU confidence histogram",
            charts.columns("Intent confidence histogram", BUCKET_LABELS, intents["histogram"]),
        ),
        "</div>",
        _table(
            "Per intent and language: hits, fallbacks (best guess below the threshold), "
            "mean confidence, histogram (0.0 to 0.9 buckets)",
            ["intent", "language", "hits", "fallbacks", "mean confidence", "histogram"],
            [
                [
                    i["intent"],
                    i["language"],
                    i["hits"],
                    i["fallbacks"],
                    "" if i["confidence_mean"] is None else f"{i['confidence_mean']:.3f}",
                    " ".join(map(str, i["histogram"])),
                ]
                for i in intents["by_language"]
            ],
        ),
        "<h2>Messages that fell back</h2>",
        _table(
            "The latest messages NLU could not place (phone numbers masked)",
            ["at (UTC)", "conversation", "channel", "language", "text", "best guess", "confidence"],
            [
                [
                    time.strftime("%Y-%m-%d %H:%M", time.gmtime(f["at"])),
                    f["conversation"],
                    f["channel"],
                    f["language"],
                    f["text"],
                    f["best_guess"],
                    f["confidence"],
                ]
                for f in r["fallback_messages"]
            ],
        ),
        '<h2>Voice</h2><div class="grid">',
        _figure(
            f"Voice notes: {voice['notes']} ({voice['minutes']} min, {voice['errors']} unusable), "
            f"mean speech-to-text confidence {voice['stt_confidence_mean']}",
            charts.columns(
                "Speech-to-text confidence histogram",
                BUCKET_LABELS,
                voice["stt_confidence_histogram"],
            ),
        ),
        _figure(
            f"Calls: {calls['total']} ({calls['minutes']} min), by language",
            charts.bars("Calls by language", calls["per_language"]),
        ),
        '</div><h2>Sales</h2><div class="grid">',
        _figure(
            "Funnel: conversations that asked a price, then orders",
            charts.bars("Sales funnel", {funnel_labels[k]: v for k, v in funnel.items()}),
        ),
        _figure(
            "Revenue per currency (paid less refunded)",
            charts.bars(
                "Revenue per currency",
                {x["currency"]: x["net_minor"] / 100 for x in r["revenue"]},
            ),
        ),
        "</div>",
        _table(
            "Revenue per currency",
            ["currency", "orders paid", "paid", "refunded", "net"],
            [
                [
                    x["currency"],
                    x["orders_paid"],
                    _money(x["paid_minor"]),
                    _money(x["refunded_minor"]),
                    _money(x["net_minor"]),
                ]
                for x in r["revenue"]
            ],
        ),
        '<h2>Delivery and writes</h2><div class="grid">',
        _figure(
            "Delivery failures by provider error code",
            charts.bars("Delivery failures by error code", failures),
        ),
        _figure(
            "CRM and payment writes pending or failed",
            charts.bars("Pending or failed writes", outbox_bars),
        ),
        "</div>",
        _table(
            "Failed CRM and payment writes",
            ["key", "kind", "attempts", "error"],
            [[j["key"], j["kind"], j["attempts"], j["error"]] for j in r["outbox"]["failed"]],
        ),
        '<h2>Sentiment</h2><div class="grid">',
        _figure("Sentiment per day", charts.lines("Sentiment per day", days, sent_series)),
        "</div>",
        _table(
            "Sentiment per language",
            ["language", "negative", "neutral", "positive"],
            [
                [k, v["negative"], v["neutral"], v["positive"]]
                for k, v in sentiment["per_language"].items()
            ],
        ),
        "</main>",
    ]
    return _doc("habla analytics", "".join(body))
