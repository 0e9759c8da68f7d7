"""``GET /metrics``: Prometheus' text format, for a scraper holding the metrics token.

The server and its engine workers write their metrics to one folder
(``runtime/metrics.py``, multi-process mode); this adds them up, with the gauges read
from the stores at scrape time (outbox jobs by status, inbox messages pending, calls in
progress). ``Authorization: Bearer $HABLA_METRICS_TOKEN``, which a Prometheus scrape
config sends with ``authorization: {credentials_file: ...}``; without a configured
token it answers 403 (never open on the public port).
"""

from __future__ import annotations

import hmac

from aiohttp import web

from runtime import metrics


class MetricsEndpoint:
    def __init__(self, token: str, gauges: metrics.StoreGauges) -> None:
        self.token, self.gauges = token, gauges

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/metrics", self.scrape)]

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return bool(self.token) and hmac.compare_digest(given.encode(), self.token.encode())

    async def scrape(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            raise web.HTTPForbidden(text="missing or wrong metrics token")
        body = await metrics.exposition(self.gauges)
        response = web.Response(body=body)
        response.headers["Content-Type"] = metrics.CONTENT_TYPE
        return response
