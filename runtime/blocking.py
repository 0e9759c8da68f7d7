"""A base for adapters over synchronous SDKs (hubspot-api-client, simple-salesforce).

The SDK's calls run on a small thread pool of the adapter's own, never on the event
loop; each call is bounded by the timeout from settings (``send.timeout_s``), and its
exceptions are mapped once to the error vocabulary (``runtime/errors.py``): the
adapter's :meth:`map_error` adds its provider's codes, everything else goes through
:func:`runtime.errors.classify`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

from runtime.errors import HablaError, TransientError, classify

T = TypeVar("T")


class BlockingClient:
    """Runs a synchronous SDK off the event loop, with a timeout and error mapping."""

    name: ClassVar[str] = "sdk"

    def __init__(self, timeout_s: float = 10.0, max_workers: int = 4) -> None:
        if timeout_s <= 0:
            raise ValueError(f"{type(self).__name__}: timeout_s must be > 0")
        self.timeout_s = timeout_s
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None

    def map_error(self, error: Exception) -> HablaError | None:
        """The provider's own mapping (None: use the generic one)."""
        return None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the pool, bounded by the timeout, errors mapped."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.max_workers, thread_name_prefix=f"habla-{self.name}"
            )
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs)),
                self.timeout_s,
            )
        except asyncio.TimeoutError as e:
            raise TransientError(f"{self.name}: no answer in {self.timeout_s:g} s") from e
        except HablaError:
            raise
        except Exception as e:
            raise (self.map_error(e) or classify(e, self.name)) from e

    async def close_pool(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
