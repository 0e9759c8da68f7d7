"""Reliability of several servers behind a load balancer: what is accepted, answered,
duplicated and lost when webhooks are redelivered, bursts arrive, a server is killed
or the provider is down; and what a second server buys in throughput.

    python -m bench.reliability [--messages 1000]

Starts the cluster of ``bench/cluster.py`` (2 ``habla run`` processes behind HAProxy,
one redis-server, one MongoDB wire-protocol server) with a fake Twilio API in this
process, drives it as Twilio does (signed webhooks; a request that does not get a 200
is posted again) and prints one table. ``tests/test_faults.py`` runs the same
scenarios and asserts nothing is lost or doubled. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.cluster import Cluster

PATH = "/webhooks/twilio/webhook"
HUBSPOT_TOKEN = "pat-eu1-habla-reliability"
LEASE_S = 5.0
_THROUGHPUT_IDS = itertools.count()
MONGO_OPTIONS = "?maxPoolSize=2"
"""The test MongoDB (secantusdb, written in Python) leaves some requests unanswered when
many arrive at once (habla then times them out and retries): few connections per client
keep it answering. A real MongoDB needs no such option."""


@dataclass
class Outcome:
    """One scenario's figures (messages = distinct user messages)."""

    scenario: str
    messages: int
    accepted: int  # answered 200 (after the provider's retries)
    answered: int  # distinct messages with at least one reply
    duplicated: int  # replies beyond one per message
    lost: int  # accepted and never answered
    seconds: float  # from the first message to the last reply
    recover_s: float = 0.0  # from the fault's end to the last reply it had held up
    out_of_order: int = 0
    refused: int = 0  # webhooks answered 5xx (or cut off) and posted again

    def row(self) -> str:
        recover = f"{self.recover_s:.1f}" if self.recover_s else "-"
        return (
            f"| {self.scenario} | {self.messages} | {self.accepted} | {self.answered} | "
            f"{self.duplicated} | {self.lost} | {self.out_of_order} | {self.refused} | "
            f"{self.seconds:.1f} | {recover} |"
        )


class Providers:
    """The fake providers the cluster's servers talk to, each speaking its real protocol:
    Twilio's Messages API, the Graph API (WhatsApp Cloud API), Stripe and HubSpot."""

    def __init__(self) -> None:
        from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, STRIPE_KEY, WA_PHONE_ID, WA_TOKEN
        from tests.fakes.graph_api import FakeGraphAPI
        from tests.fakes.hubspot_api import FakeHubSpotAPI
        from tests.fakes.stripe_api import FakeStripeAPI
        from tests.fakes.twilio_api import FakeTwilioAPI

        self.twilio = FakeTwilioAPI(ACCOUNT_SID, AUTH_TOKEN)
        self.graph = FakeGraphAPI(WA_TOKEN, WA_PHONE_ID)
        self.stripe = FakeStripeAPI(STRIPE_KEY)
        self.hubspot = FakeHubSpotAPI(HUBSPOT_TOKEN)
        self.all: list[Any] = [self.twilio, self.graph, self.stripe, self.hubspot]

    async def start(self) -> Providers:
        for fake in self.all:
            await fake.start()
        return self

    async def close(self) -> None:
        for fake in self.all:
            await fake.close()

    def env(self) -> dict[str, str]:
        from tests.conftest import STRIPE_KEY, WHSEC, whatsapp_env

        return whatsapp_env(self.graph.url) | {
            "HABLA_PAYMENTS": "stripe",
            "STRIPE_API_KEY": STRIPE_KEY,
            "STRIPE_WEBHOOK_SECRET": WHSEC,
            "HABLA_STRIPE_API_BASE": self.stripe.url,
            "HABLA_CRM": "hubspot",
            "HUBSPOT_ACCESS_TOKEN": HUBSPOT_TOKEN,
            "HABLA_HUBSPOT_HOST": self.hubspot.url,
        }


class Sender:
    """Posts signed webhooks through the load balancer as Twilio and Meta do: a request
    that does not get a 200 (a server died under it, 5xx) is posted again."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.session = url, session
        self.statuses: collections.Counter[int] = collections.Counter()

    async def post(self, form: dict[str, str], *, retries: int = 30) -> bool:
        """A Twilio webhook (WhatsApp through Twilio)."""
        from tests.conftest import PUBLIC_URL, sign

        headers = {"X-Twilio-Signature": sign(PUBLIC_URL + PATH, form)}
        return await self._send(PATH, form, headers, retries)

    async def post_cloud(self, message: dict[str, Any], *, retries: int = 30) -> bool:
        """A Cloud API webhook carrying one user message."""
        from tests.test_whatsapp import PATH as CLOUD_PATH
        from tests.test_whatsapp import envelope, sign

        body = json.dumps(envelope([message])).encode()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body)}
        return await self._send(CLOUD_PATH, body, headers, retries)

    async def _send(self, path: str, data: Any, headers: dict[str, str], retries: int) -> bool:
        for _ in range(retries):
            try:
                async with self.session.post(self.url + path, data=data, headers=headers) as r:
                    self.statuses[r.status] += 1
                    if r.status == 200:
                        return True
                    if r.status < 500:
                        raise AssertionError(f"{r.status}: {await r.text()}")
            except aiohttp.ClientError:
                self.statuses[0] += 1
            await asyncio.sleep(0.2)  # Twilio's retry, paced
        return False


def form(text: str, user: str) -> dict[str, str]:
    from tests.conftest import whatsapp_form

    return whatsapp_form(text, user)


async def wait_replies(provider: Any, users: list[str], count: int, timeout: float) -> bool:
    """Wait until every user has ``count`` replies; False on timeout."""
    wanted = [f"whatsapp:{u}" for u in users]

    def done() -> bool:
        got = collections.Counter(m.to for m in provider.sent)
        return all(got[w] >= count for w in wanted)

    async def reached() -> None:
        async with provider._changed:
            await provider._changed.wait_for(done)

    try:
        await asyncio.wait_for(reached(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


def tally(
    name: str, provider: Any, users: list[str], per_user: int, accepted: int, began: float
) -> Outcome:
    got = collections.Counter(m.to for m in provider.sent)
    counts = [got[f"whatsapp:{u}"] for u in users]
    last = max((m.at for m in provider.sent if m.to.removeprefix("whatsapp:") in users), default=0)
    return Outcome(
        scenario=name,
        messages=len(users) * per_user,
        accepted=accepted,
        answered=sum(min(c, per_user) for c in counts),
        duplicated=sum(max(0, c - per_user) for c in counts),
        lost=max(0, accepted - sum(min(c, per_user) for c in counts)),
        seconds=max(0.0, last - began),
    )


async def redelivery(cluster: Cluster, provider: Any, n: int = 1000) -> Outcome:
    """``n`` signed webhooks, each delivered 3 times at once, over the servers."""
    users = [f"+4477009{i:05d}" for i in range(n)]
    gate = asyncio.Semaphore(60)
    accepted = 0
    began = time.monotonic()
    async with aiohttp.ClientSession() as session:
        sender = Sender(cluster.url, session)

        async def three_times(user: str) -> None:
            nonlocal accepted
            message = form("hello", user)
            async with gate:
                results = await asyncio.gather(*(sender.post(message) for _ in range(3)))
            accepted += all(results)

        await asyncio.gather(*(three_times(u) for u in users))
    await wait_replies(provider, users, 1, timeout=600)
    return tally("redelivery ×3", provider, users, 1, accepted, began)


async def bursts(cluster: Cluster, provider: Any, conversations: int = 50) -> Outcome:
    """``conversations`` × 20 rapid messages; each asks about another order number,
    which the reply repeats, so the order of the replies can be checked."""
    users = [f"+4477008{i:05d}" for i in range(conversations)]
    accepted = 0
    began = time.monotonic()
    async with aiohttp.ClientSession() as session:
        sender = Sender(cluster.url, session)

        async def conversation(user: str) -> None:
            nonlocal accepted
            for n in range(20):
                ok = await sender.post(form(f"where is my order AB{n:05d}?", user))
                accepted += ok  # (after the await: ``x += await`` reads x before it)

        await asyncio.gather(*(conversation(u) for u in users))
    await wait_replies(provider, users, 20, timeout=600)
    outcome = tally("bursts 20/conversation", provider, users, 20, accepted, began)
    for user in users:
        numbers = [
            int(m.body.split("AB", 1)[1][:5])
            for m in provider.sent
            if m.to == f"whatsapp:{user}" and "AB" in m.body
        ]
        outcome.out_of_order += numbers != sorted(numbers)
    return outcome


async def kill_one(cluster: Cluster, provider: Any, n: int = 60) -> Outcome:
    """``kill -9`` server 0 while ``n`` messages arrive over 3 s; then restart it."""
    users = [f"+4477007{i:05d}" for i in range(n)]
    accepted = 0
    began = time.monotonic()
    async with aiohttp.ClientSession() as session:
        sender = Sender(cluster.url, session)

        async def one(user: str) -> None:
            nonlocal accepted
            ok = await sender.post(form("when are you open?", user))
            accepted += ok

        tasks = []
        for i, user in enumerate(users):
            tasks.append(asyncio.ensure_future(one(user)))
            if i == n // 3:
                await cluster.servers[0].kill()  # mid-stream, turns in flight
                killed_at = time.monotonic()
            await asyncio.sleep(3.0 / n)  # pacing: the messages arrive over 3 seconds
        await asyncio.gather(*tasks)
    await wait_replies(provider, users, 1, timeout=LEASE_S * 10 + 60)
    outcome = tally("kill -9 one server", provider, users, 1, accepted, began)
    last = max(m.at for m in provider.sent if m.to.removeprefix("whatsapp:") in users)
    outcome.recover_s = last - killed_at
    await cluster.start_server(0)
    return outcome


async def stores_down(
    cluster: Cluster,
    provider: Any,
    mongo_down_s: float = 30.0,
    n: int = 60,
    redis_down_s: float = 5.0,
) -> Outcome:
    """Redis is down for ``redis_down_s`` and restarted, then MongoDB is down for
    ``mongo_down_s``, while ``n`` messages arrive over the whole time: a webhook is
    answered 200 only once it is stored (else 5xx, and posted again), and every message
    answered 200 is answered once, when the stores are back."""
    users = [f"+4477005{i:05d}" for i in range(n)]
    accepted = 0
    began = time.monotonic()
    spread = redis_down_s + mongo_down_s + 10.0

    async def faults() -> float:
        assert cluster.redis is not None and cluster.mongo is not None
        await asyncio.sleep(2.0)
        await cluster.redis.stop()  # its append-only file keeps what it had
        await asyncio.sleep(redis_down_s)
        await cluster.start_redis()
        await asyncio.sleep(2.0)
        await cluster.mongo.kill()
        await asyncio.sleep(mongo_down_s)
        await cluster.start_mongo()
        return time.monotonic()

    async with aiohttp.ClientSession() as session:
        sender = Sender(cluster.url, session)

        async def one(user: str) -> None:
            nonlocal accepted
            ok = await sender.post(form("when are you open?", user), retries=400)
            accepted += ok

        fault = asyncio.ensure_future(faults())
        tasks = []
        for user in users:
            tasks.append(asyncio.ensure_future(one(user)))
            await asyncio.sleep(spread / n)
        await asyncio.gather(*tasks)
        ends = await fault
    await wait_replies(provider, users, 1, timeout=240)
    outcome = tally(
        f"Redis down {redis_down_s:.0f} s, then MongoDB down {mongo_down_s:.0f} s",
        provider,
        users,
        1,
        accepted,
        began,
    )
    last = max((m.at for m in provider.sent if m.to.removeprefix("whatsapp:") in users), default=0)
    outcome.recover_s = max(0.0, last - ends)
    outcome.refused = sum(n for status, n in sender.statuses.items() if status != 200)
    return outcome


async def providers_down(
    cluster: Cluster, providers: Providers, seconds: float = 60.0, n: int = 20, buyers: int = 10
) -> Outcome:
    """Twilio, the Graph API, Stripe and HubSpot all refuse every request (503; HubSpot
    429) for ``seconds``. Meanwhile ``n`` users write through Twilio, and ``buyers`` on
    the Cloud API, already asked "buy a hoodie?", confirm: each confirmation needs a
    Stripe Checkout Session, a HubSpot contact and deal, and two replies (the link is
    late; the link). Afterwards every reply arrives once, and Stripe and HubSpot hold
    exactly one session, contact and deal per buyer."""
    from tests.test_whatsapp import interactive, text_msg

    twilio, graph, stripe, hubspot = providers.all
    users = [f"+4477004{i:05d}" for i in range(n)]
    shoppers = [f"3461100{i:04d}" for i in range(buyers)]
    accepted = 0

    def to(shopper: str) -> list[str]:
        return [
            m["interactive"]["body"]["text"] if m["type"] == "interactive" else m["text"]["body"]
            for m in graph.sent
            if m["to"] == shopper
        ]

    async with aiohttp.ClientSession() as session:
        sender = Sender(cluster.url, session)
        asked = await asyncio.gather(
            *(sender.post_cloud(text_msg(b, "quiero comprar una sudadera")) for b in shoppers)
        )
        assert all(asked)
        async with graph._changed:  # each buyer sees the question before the outage
            await asyncio.wait_for(
                graph._changed.wait_for(lambda: all(len(to(b)) >= 1 for b in shoppers)), 120
            )
        began = time.monotonic()
        for fake, status in ((twilio, 503), (graph, 503), (stripe, 503), (hubspot, 429)):
            fake.outage(seconds, status)
        ends = began + seconds
        for b in shoppers:
            accepted += await sender.post_cloud(interactive(b, "button_reply", "/affirm", "Sí"))
        for user in users:
            ok = await sender.post(form("when are you open?", user))
            accepted += ok
            await asyncio.sleep(min(0.5, seconds / (2 * n)))

    def linked() -> bool:
        return sum(t.startswith("Aquí tienes el enlace") for b in shoppers for t in to(b)) >= buyers

    async def until(condition: asyncio.Condition, check: Any) -> None:
        async with condition:
            await condition.wait_for(check)

    wait = seconds + 300
    await wait_replies(twilio, users, 1, timeout=wait)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(until(graph._changed, linked), wait)
        deals = lambda: len(hubspot.objects("deals")) >= buyers  # noqa: E731
        await asyncio.wait_for(until(hubspot.created, deals), wait)
    last = time.monotonic()  # (each wait ends as soon as what it waits for happened)
    twilio_replies = collections.Counter(m.to for m in twilio.sent)
    per_buyer = [to(b) for b in shoppers]
    answered = sum(min(1, twilio_replies[f"whatsapp:{u}"]) for u in users)
    answered += sum(
        any(t.startswith("Aquí tienes el enlace") for t in texts) for texts in per_buyer
    )
    duplicated = sum(max(0, twilio_replies[f"whatsapp:{u}"] - 1) for u in users)
    duplicated += sum(max(0, len(texts) - 3) for texts in per_buyer)  # question, late, link
    duplicated += max(0, len(stripe.sessions) - buyers)
    duplicated += max(0, len(hubspot.objects("contacts")) - buyers)
    duplicated += max(0, len(hubspot.objects("deals")) - buyers)
    return Outcome(
        scenario=f"Twilio, Graph, Stripe, HubSpot down {seconds:.0f} s",
        messages=n + buyers,
        accepted=accepted,
        answered=answered,
        duplicated=duplicated,
        lost=max(0, accepted - answered),
        seconds=last - began,
        recover_s=max(0.0, last - ends),
        refused=sum(n for status, n in sender.statuses.items() if status != 200),
    )


@dataclass
class Hostile:
    """What hostile requests got: by status class, hangs, and what the servers logged."""

    requests: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    hung: collections.Counter[str] = field(default_factory=collections.Counter)  # by kind
    seconds: list[float] = field(default_factory=list)  # each request's, answered or not
    slowest: str = ""
    raw: int = 0  # written to a server's socket directly
    raw_5xx: int = 0
    tracebacks: int = 0
    errors: int = 0  # ERROR lines in the servers' logs meanwhile
    warnings: int = 0
    answers_after: bool = False  # a normal message afterwards got its reply

    @property
    def server_errors(self) -> int:
        return self.statuses["5xx"] + self.raw_5xx

    def row(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"{self.requests} hostile requests through the load balancer ({kinds}) and "
            f"{self.raw} raw ones to the servers ({self.raw_5xx} 5xx); "
            f"{sum(self.hung.values())} hung {dict(self.hung) or ''}, "
            f"answered in p50 {_pct(self.seconds, 50):.3f} s, p99 {_pct(self.seconds, 99):.2f} s, "
            f"slowest {max(self.seconds, default=0):.2f} s ({self.slowest}); "
            f"logged: {self.warnings} WARNING lines, "
            f"{self.errors} ERROR, {self.tracebacks} tracebacks; a normal turn afterwards: "
            f"{'answered' if self.answers_after else 'NOT answered'}"
        )


HANG_S = 60.0
"""A hostile request not answered in this long hangs. Not shorter: the signed requests
that are usable start about 1,000 turns at once, and a REST request (answered when its
turn ends) queues behind them for 15-20 s on 2 cores."""


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] if ordered else 0.0


async def hostile(cluster: Cluster, provider: Any, n: int = 10_000) -> Hostile:
    """``n`` malformed requests on every webhook path (``bench/malformed.py``) through
    the load balancer, 32 at a time, each with a ``HANG_S`` deadline; raw non-HTTP bytes to
    each server; then one ordinary message, which must be answered."""
    from bench import malformed

    out = Hostile()
    logs = {s.name: s.log_path.stat().st_size for s in cluster.servers}
    gate = asyncio.Semaphore(32)
    timeout = aiohttp.ClientTimeout(total=HANG_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(request: malformed.Request) -> None:
            async with gate:
                began = time.monotonic()
                try:
                    async with session.request(
                        request.method,
                        cluster.url + request.path,
                        data=request.body or None,
                        headers=request.headers,
                        skip_auto_headers=["Content-Type"],
                    ) as r:
                        await r.read()
                        out.statuses[f"{r.status // 100}xx"] += 1
                except asyncio.TimeoutError:  # no answer within the deadline
                    out.hung[request.kind] += 1
                except aiohttp.ClientError:  # cut off while sending more than allowed
                    out.statuses["closed"] += 1
                took = time.monotonic() - began
                if took > max(out.seconds, default=0):
                    out.slowest = f"{request.kind} {request.method} {request.path[:40]}"
                out.seconds.append(took)
                out.requests += 1

        await asyncio.gather(*(one(r) for r in malformed.requests(n)))
    for server in cluster.servers:
        for raw in malformed.raw_requests() * 5:
            status = await _raw(server.port, raw)
            out.raw += 1
            out.raw_5xx += status >= 500
            if status < 0:
                out.hung[f"raw {raw[:24]!r}"] += 1
    before = len(provider.sent)
    async with aiohttp.ClientSession() as session:
        await Sender(cluster.url, session).post(form("when are you open?", "+447700311111"))
    out.answers_after = await wait_replies(provider, ["+447700311111"], 1, timeout=60)
    out.answers_after &= len(provider.sent) > before
    for server in cluster.servers:
        with server.log_path.open("rb") as f:
            f.seek(logs[server.name])
            text = f.read().decode(errors="replace")
        out.tracebacks += text.count("Traceback")
        out.errors += text.count(" ERROR ")
        out.warnings += text.count(" WARNING ")
    return out


async def _raw(port: int, data: bytes) -> int:
    """Write ``data`` to the server and read its answer: the status (0: closed without
    one; -1: no answer and not closed within ``HANG_S``)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0
    try:
        writer.write(data)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), HANG_S)
        parts = line.split()
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except asyncio.TimeoutError:
        return -1
    except OSError:
        return 0
    finally:
        writer.close()


async def throughput(cluster: Cluster, provider: Any, n: int = 400) -> float:
    """Turns per second through the load balancer: ``n`` users, one message each."""
    users = [f"+447705{next(_THROUGHPUT_IDS):06d}" for _ in range(n)]
    gate = asyncio.Semaphore(32)
    began = time.monotonic()
    async with aiohttp.ClientSession() as session:
        sender = Sender(cluster.url, session)

        async def one(user: str) -> None:
            async with gate:
                await sender.post(form("when are you open?", user))

        await asyncio.gather(*(one(u) for u in users))
    await wait_replies(provider, users, 1, timeout=600)
    return n / (time.monotonic() - began)


def cluster_env(workdir: Path, providers: Providers) -> dict[str, str]:
    from tests.conftest import base_env

    env = (
        base_env(workdir / "unused", providers.twilio.url)
        | providers.env()
        | {
            "HABLA_INBOX_LEASE_S": str(LEASE_S),
            "HABLA_SEND_RETRY_BACKOFF_S": "1",
            "HABLA_SEND_MAX_ATTEMPTS": "2",
            "HABLA_TWILIO_STATUS_CALLBACK": "false",
            "HABLA_OUTBOX_BACKOFF_S": "0.5",
        }
    )
    env.pop("HABLA_DATA_DIR")
    return env


SCENARIOS = ("redelivery", "bursts", "kill", "stores", "providers", "hostile")


async def run(messages: int, only: tuple[str, ...] = SCENARIOS) -> None:
    providers = await Providers().start()
    twilio = providers.twilio
    workdir = Path(tempfile.mkdtemp(prefix="habla-reliability-"))
    cluster = Cluster(
        workdir, servers=2, env=cluster_env(workdir, providers), mongo_options=MONGO_OPTIONS
    )
    began = time.monotonic()
    await cluster.start()
    print(f"cluster up in {time.monotonic() - began:.0f} s ({os.cpu_count()} CPUs)")
    outcomes, malformed, one, two = [], None, 0.0, 0.0
    try:
        two = await throughput(cluster, twilio)
        if "redelivery" in only:
            outcomes.append(await redelivery(cluster, twilio, messages))
        if "bursts" in only:
            outcomes.append(await bursts(cluster, twilio))
        if "kill" in only:
            outcomes.append(await kill_one(cluster, twilio))
        if "stores" in only:
            outcomes.append(await stores_down(cluster, twilio))
        if "providers" in only:
            outcomes.append(await providers_down(cluster, providers))
        if "hostile" in only:
            malformed = await hostile(cluster, twilio)
        await cluster.servers[1].kill()
        one = await throughput(cluster, twilio)
    finally:
        await cluster.stop()
        await providers.close()
    print(
        "\n| scenario | messages | accepted | answered | duplicated | lost | out of order "
        "| 5xx, posted again | seconds | recovered in (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for outcome in outcomes:
        print(outcome.row())
    if malformed is not None:
        print("\n" + malformed.row())
    print(
        f"\nthroughput through HAProxy: 1 server {one:.1f} turns/s, 2 servers {two:.1f} "
        f"turns/s ({two / one:.2f}×) on this {os.cpu_count()}-CPU machine"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="redelivery scenario size")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}"
    )
    args = parser.parse_args()
    import tests.conftest  # noqa: F401  (imports Rasa, which installs uvloop's policy)

    # uvloop's policy has no child watcher: the cluster's processes need the default one
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    asyncio.run(run(args.messages, tuple(args.only.split(","))))


if __name__ == "__main__":
    main()
