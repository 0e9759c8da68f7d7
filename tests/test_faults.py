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
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN
from tests.fakes.twilio_api import FakeTwilioAPI

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[FakeTwilioAPI]:
    fake = FakeTwilioAPI(ACCOUNT_SID, AUTH_TOKEN)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture(scope="module")
async def cluster(
    provider: FakeTwilioAPI, tmp_path_factory: pytest.TempPathFactory, model_path: Path
) -> AsyncIterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    env = reliability.cluster_env(workdir, provider.url)
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


async def test_replies_wait_out_a_provider_outage_and_go_once(
    cluster: Cluster, provider: FakeTwilioAPI
) -> None:
    """Twilio answers 503 for 60 s while 40 messages arrive: every reply of that window
    is delivered afterwards, once (before: retried for about 8 s, then dropped)."""
    refused = provider.refused
    outcome = await reliability.outage(cluster, provider, 60.0, 40)
    assert provider.refused > refused  # the outage was hit
    assert (outcome.accepted, outcome.answered) == (40, 40), outcome
    assert (outcome.duplicated, outcome.lost) == (0, 0), outcome
