"""The operator API: what a conversation said and what happened to every reply.

``GET /api/conversations/{conversation_id}`` with ``Authorization: Bearer
$HABLA_ADMIN_TOKEN`` returns the user's and bot's messages (from the conversation
store; voice notes with their transcript, language, confidence and duration) and
every outbound message with its delivery status trail (sent, delivered, read, failed
with the provider's code and reason). ``GET /api/outbox[?status=failed]`` lists CRM
and payment writes; ``GET /api/orders/{order_id}`` an order with its status history
and ``payment_provider``, the provider that handles its payment (stripe, paypal);
``GET /api/calls`` recent phone calls and the voice minutes.
Without a configured token it answers 403 to everything.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from commerce.service import Commerce
from runtime.calls import CallLog
from runtime.deliveries import DeliveryLog


class AdminAPI:
    def __init__(
        self,
        token: str,
        events: Callable[[str], Awaitable[list[dict[str, Any]]]],
        deliveries: DeliveryLog,
        commerce: Commerce | None = None,
        calls: CallLog | None = None,
    ) -> None:
        """``events``: a conversation's events as Rasa's dicts, from the tracker store
        (SQLite, MongoDB or memory), oldest first."""
        self.token, self.events, self.deliveries, self.commerce = (
            token,
            events,
            deliveries,
            commerce,
        )
        self.calls = calls

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/conversations/{conversation_id}", self.conversation),
            web.get("/api/outbox", self.outbox),
            web.get("/api/orders/{order_id}", self.order),
            web.get("/api/calls", self.call_list),
        ]

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return bool(self.token) and hmac.compare_digest(given.encode(), self.token.encode())

    async def _messages(self, conversation_id: str) -> list[dict[str, Any]]:
        out = []
        for event in await self.events(conversation_id):
            if event.get("event") not in ("user", "bot"):
                continue
            item = {"from": event["event"], "text": event.get("text"), "at": event.get("timestamp")}
            if event["event"] == "user":
                item["intent"] = (event.get("parse_data") or {}).get("intent", {}).get("name")
                item["channel"] = event.get("input_channel")
                meta = event.get("metadata") or {}
                for key in ("voice", "language", "call"):
                    if key in meta:
                        item[key] = meta[key]
            out.append(item)
        return out

    async def conversation(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPForbidden(text="missing or wrong admin token")
        conversation_id = request.match_info["conversation_id"]
        return web.json_response(
            {
                "conversation_id": conversation_id,
                "messages": await self._messages(conversation_id),
                "deliveries": await self.deliveries.history(conversation_id),
                "calls": [
                    c.to_json()
                    for c in (await self.calls.recent(100, conversation_id) if self.calls else [])
                ],
            }
        )

    async def call_list(self, request: web.Request) -> web.Response:
        """Recent calls (``?limit=``) and the voice minutes of the last ``?days=`` (30)."""
        if not self._authorized(request):
            raise web.HTTPForbidden(text="missing or wrong admin token")
        try:
            limit = min(max(int(request.query.get("limit", "50")), 1), 500)
            days = min(max(float(request.query.get("days", "30")), 0.0), 3660.0)
        except ValueError as e:
            raise web.HTTPBadRequest(text="limit and days must be numbers") from e
        if self.calls is None:
            return web.json_response({"calls": [], "voice_minutes": 0.0})
        since = time.time() - days * 86400
        return web.json_response(
            {
                "calls": [c.to_json() for c in await self.calls.recent(limit)],
                "voice_minutes": await self.calls.voice_minutes(since),
                "days": days,
            }
        )

    async def outbox(self, request: web.Request) -> web.Response:
        """CRM and payment writes: ``?status=failed`` lists the ones that gave up."""
        if not self._authorized(request):
            raise web.HTTPForbidden(text="missing or wrong admin token")
        if self.commerce is None:
            return web.json_response({"jobs": []})
        jobs = await self.commerce.outbox.jobs(request.query.get("status", ""))
        return web.json_response({"jobs": [j.to_json() for j in jobs]})

    async def order(self, request: web.Request) -> web.Response:
        """One order with its status history and its payment provider."""
        if not self._authorized(request):
            raise web.HTTPForbidden(text="missing or wrong admin token")
        order = (
            await self.commerce.orders.get(request.match_info["order_id"])
            if self.commerce is not None
            else None
        )
        if order is None or self.commerce is None:
            raise web.HTTPNotFound(text="no such order")
        return web.json_response(
            order.to_json() | {"payment_provider": self.commerce.provider_name(order)}
        )
