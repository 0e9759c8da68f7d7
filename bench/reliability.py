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
import itertools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.cluster import Cluster

PATH = "/webhooks/twilio/webhook"
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

    def row(self) -> str:
        recover = f"{self.recover_s:.1f}" if self.recover_s else "-"
        return (
            f"| {self.scenario} | {self.messages} | {self.accepted} | {self.answered} | "
            f"{self.duplicated} | {self.lost} | {self.out_of_order} | {self.seconds:.1f} | "
            f"{recover} |"
        )


class Sender:
    """Posts signed webhooks through the load balancer as Twilio does: a request that
    does not get a 200 (a server died under it, 5xx) is posted again."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.session = url, session
        self.statuses: collections.Counter[int] = collections.Counter()

    async def post(self, form: dict[str, str], *, retries: int = 30) -> bool:
        from tests.conftest import PUBLIC_URL, sign

        headers = {"X-Twilio-Signature": sign(PUBLIC_URL + PATH, form)}
        for _ in range(retries):
            try:
                async with self.session.post(self.url + PATH, data=form, headers=headers) as r:
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


async def outage(cluster: Cluster, provider: Any, seconds: float = 60.0, n: int = 40) -> Outcome:
    """Twilio answers 503 for ``seconds``; ``n`` messages arrive during the outage."""
    users = [f"+4477006{i:05d}" for i in range(n)]
    provider.outage(seconds)
    ends = time.monotonic() + seconds
    accepted = 0
    began = time.monotonic()
    async with aiohttp.ClientSession() as session:
        sender = Sender(cluster.url, session)
        for user in users:
            ok = await sender.post(form("when are you open?", user))
            accepted += ok
            await asyncio.sleep(min(0.5, seconds / (2 * n)))
    await wait_replies(provider, users, 1, timeout=seconds + 240)
    outcome = tally(f"Twilio 503 for {seconds:.0f} s", provider, users, 1, accepted, began)
    last = max((m.at for m in provider.sent if m.to.removeprefix("whatsapp:") in users), default=0)
    outcome.recover_s = max(0.0, last - ends)
    return outcome


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


def cluster_env(workdir: Path, provider_url: str) -> dict[str, str]:
    from tests.conftest import base_env

    env = base_env(workdir / "unused", provider_url) | {
        "HABLA_INBOX_LEASE_S": str(LEASE_S),
        "HABLA_SEND_RETRY_BACKOFF_S": "1",
        "HABLA_SEND_MAX_ATTEMPTS": "2",
        "HABLA_TWILIO_STATUS_CALLBACK": "false",
    }
    env.pop("HABLA_DATA_DIR")
    return env


async def run(messages: int) -> None:
    from tests.conftest import ACCOUNT_SID, AUTH_TOKEN
    from tests.fakes.twilio_api import FakeTwilioAPI

    provider = FakeTwilioAPI(ACCOUNT_SID, AUTH_TOKEN)
    await provider.start()
    workdir = Path(tempfile.mkdtemp(prefix="habla-reliability-"))
    env = cluster_env(workdir, provider.url)
    cluster = Cluster(workdir, servers=2, env=env, mongo_options=MONGO_OPTIONS)
    began = time.monotonic()
    await cluster.start()
    print(f"cluster up in {time.monotonic() - began:.0f} s ({os.cpu_count()} CPUs)")
    try:
        two = await throughput(cluster, provider)
        outcomes = [
            await redelivery(cluster, provider, messages),
            await bursts(cluster, provider),
            await kill_one(cluster, provider),
            await outage(cluster, provider),
        ]
        await cluster.servers[1].kill()
        one = await throughput(cluster, provider)
    finally:
        await cluster.stop()
        await provider.close()
    print(
        "\n| scenario | messages | accepted | answered | duplicated | lost | out of order "
        "| seconds | recovered in (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for outcome in outcomes:
        print(outcome.row())
    print(
        f"\nthroughput through HAProxy: 1 server {one:.1f} turns/s, 2 servers {two:.1f} "
        f"turns/s ({two / one:.2f}×) on this {os.cpu_count()}-CPU machine"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="redelivery scenario size")
    args = parser.parse_args()
    import tests.conftest  # noqa: F401  (imports Rasa, which installs uvloop's policy)

    # uvloop's policy has no child watcher: the cluster's processes need the default one
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    asyncio.run(run(args.messages))


if __name__ == "__main__":
    main()
