"""Fault tests: real habla processes behind HAProxy, sharing a real redis-server and a
MongoDB wire-protocol server (``bench/cluster.py``), driven as Twilio drives them: signed
webhooks, and a request that does not get a 200 is posted again.

Run by ``make test-faults`` (HAProxy is Debian's: ``sudo apt-get install -y haproxy``;
``.ci/run`` installs it). The scenarios are ``bench/reliability.py``'s, which also
prints their figures; every assertion is on what the fake Twilio API received. Each is
bounded in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench import reliability
from bench.cluster import Cluster
from tests.fakes.twilio_api import FakeTwilioAPI

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
async def providers() -> AsyncIterator[reliability.Providers]:
    fakes = await reliability.Providers().start()
    yield fakes
    await fakes.close()


@pytest.fixture(scope="module")
def provider(providers: reliability.Providers) -> FakeTwilioAPI:
    return providers.twilio


@pytest.fixture(scope="module")
async def cluster(
    providers: reliability.Providers,
    tmp_path_factory: pytest.TempPathFactory,
    model_path: Path,
) -> AsyncIterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    env = reliability.cluster_env(workdir, providers)
    cluster = Cluster(workdir, servers=2, env=env, mongo_options=reliability.MONGO_OPTIONS)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


async def test_redelivered_webhooks_are_answered_once_across_two_servers(
    cluster: Cluster, provider: FakeTwilioAPI
) -> None:
    """1,000 signed webhooks, each delivered 3 times at once, spread over 2 servers by
    the load balancer: exactly 1,000 turns and 1,000 replies."""
    outcome = await reliability.redelivery(cluster, provider, 1000)
    assert (outcome.accepted, outcome.answered) == (1000, 1000), outcome
    assert (outcome.duplicated, outcome.lost) == (0, 0), outcome


async def test_each_conversations_replies_keep_the_order_of_its_messages(
    cluster: Cluster, provider: FakeTwilioAPI
) -> None:
    """50 conversations × 20 rapid messages over 2 servers: each conversation's replies
    come in the order of its messages (each reply repeats the order number asked)."""
    outcome = await reliability.bursts(cluster, provider, 50)
    assert (outcome.accepted, outcome.answered) == (1000, 1000), outcome
    assert (outcome.duplicated, outcome.lost, outcome.out_of_order) == (0, 0, 0), outcome


async def test_a_server_killed_under_load_loses_nothing_and_answers_nothing_twice(
    cluster: Cluster, provider: FakeTwilioAPI
) -> None:
    """``kill -9`` one server while messages arrive: every message acknowledged with 200
    is answered exactly once by the survivor, within seconds; the killed server restarts
    and answers nothing again."""
    outcome = await reliability.kill_one(cluster, provider, 60)
    assert (outcome.accepted, outcome.answered) == (60, 60), outcome
    assert (outcome.duplicated, outcome.lost) == (0, 0), outcome
    assert outcome.recover_s < 10 * reliability.LEASE_S, outcome
    sent = len(provider.sent)
    # the restarted server serves again (the load balancer sends it half the traffic)...
    late = await reliability.throughput(cluster, provider, 20)
    assert late > 0 and len(provider.sent) == sent + 20
    await asyncio.sleep(2 * reliability.LEASE_S)  # observing: a resume round runs meanwhile
    assert len(provider.sent) == sent + 20  # ...and answered nothing a second time


async def test_redis_restarted_and_mongodb_down_lose_nothing(
    cluster: Cluster, provider: FakeTwilioAPI
) -> None:
    """Redis down for 5 s and restarted, then MongoDB down for 30 s, while 60 messages
    arrive: a webhook that could not be stored is answered 5xx (and posted again), never
    200 and then lost; every message answered 200 is answered once when the stores are
    back (a turn that keeps failing waits for them instead of apologising)."""
    outcome = await reliability.stores_down(cluster, provider, mongo_down_s=30.0, n=60)
    assert outcome.refused > 0  # the outage was hit: some webhooks were posted again
    assert (outcome.accepted, outcome.answered) == (60, 60), outcome
    assert (outcome.duplicated, outcome.lost) == (0, 0), outcome
    texts = {m.body for m in provider.sent if m.to.startswith("whatsapp:+4477005")}
    assert len(texts) == 1 and "Monday" in texts.pop()  # answers, not apologies


async def test_providers_down_for_a_minute_lose_and_double_nothing(
    cluster: Cluster, providers: reliability.Providers
) -> None:
    """Twilio, the Graph API and Stripe answer 503 and HubSpot 429 for 60 s while 20
    Twilio users write and 10 Cloud API buyers confirm an order: every reply arrives
    afterwards, once; Stripe holds one Checkout Session and HubSpot one contact and one
    deal per buyer (before: replies were retried for about 8 s, then dropped)."""
    outcome = await reliability.providers_down(cluster, providers, 60.0, n=20, buyers=10)
    for fake in providers.all:
        assert fake.down.refused > 0, fake  # each outage was hit
    assert (outcome.accepted, outcome.answered) == (30, 30), outcome
    assert (outcome.duplicated, outcome.lost) == (0, 0), outcome
    assert len(providers.stripe.sessions) == 10
    assert len(providers.hubspot.objects("contacts")) == 10


async def test_ten_thousand_hostile_requests_get_no_5xx_and_no_hang(
    cluster: Cluster, provider: FakeTwilioAPI
) -> None:
    """10,000 malformed requests over every webhook path (bad encodings, broken
    multipart, deep or huge JSON, wrong types under valid signatures, absurd counts and
    lengths) and raw non-HTTP bytes to each server: never a 5xx, never a hang, no
    traceback or ERROR in the logs; a normal message afterwards is answered."""
    out = await reliability.hostile(cluster, provider, 10_000)
    assert out.requests == 10_000 and out.raw > 0, out.row()
    assert out.server_errors == 0 and not out.hung, out.row()
    assert (out.tracebacks, out.errors) == (0, 0), out.row()
    assert out.statuses["4xx"] > 8000 and out.warnings > 0, out.row()
    assert out.answers_after, out.row()
