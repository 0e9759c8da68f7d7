"""Retries with backoff for transient failures (the vocabulary is in runtime/errors.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from runtime import metrics
from runtime.errors import HablaError, PermanentError, TransientError

T = TypeVar("T")

__all__ = ["PermanentError", "TransientError", "backoff_delay", "with_retries"]


def backoff_delay(
    attempt: int, backoff_s: float, max_delay_s: float, retry_after: float | None = None
) -> float:
    """Exponential backoff with jitter for the ``attempt``-th failure (1-based); a
    provider's ``Retry-After`` is honoured up to ``max_delay_s``."""
    delay = min(max_delay_s, backoff_s * 2 ** (attempt - 1))
    if retry_after is not None:
        delay = max(delay, min(retry_after, max_delay_s))
    return delay * random.uniform(0.8, 1.2)


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    backoff_s: float,
    max_delay_s: float = 30.0,
    family: str = "",
    provider: str = "",
) -> tuple[T, int]:
    """Run ``call`` until it succeeds, raising the last error after ``attempts``.

    Only transient :class:`HablaError`\\ s are retried; each retry is counted in
    ``habla_provider_retries_total`` under ``family`` (channel, crm, ...) and
    ``provider``. Returns the result and the number of attempts it took.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await call(), attempt
        except HablaError as e:
            if not e.transient or attempt == attempts:
                raise
            metrics.retried(family, provider)
            await asyncio.sleep(backoff_delay(attempt, backoff_s, max_delay_s, e.retry_after))
    raise AssertionError("unreachable")
