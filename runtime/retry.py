"""Errors mapped once: transient ones are retried with backoff, permanent ones are not."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class TransientError(Exception):
    """Worth retrying: rate limit, 5xx, timeout, connection reset."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class PermanentError(Exception):
    """Retrying will not help: bad number, bad credentials, rejected content."""


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    backoff_s: float,
    max_delay_s: float = 30.0,
) -> tuple[T, int]:
    """Run ``call`` until it succeeds, raising the last error after ``attempts``.

    Only :class:`TransientError` is retried. Returns the result and the number of
    attempts it took.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await call(), attempt
        except TransientError as e:
            if attempt == attempts:
                raise
            delay = min(max_delay_s, backoff_s * 2 ** (attempt - 1))
            if e.retry_after is not None:
                delay = max(delay, min(e.retry_after, max_delay_s))
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
    raise AssertionError("unreachable")
