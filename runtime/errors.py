"""One error vocabulary: transient (retry with backoff) or permanent (fail loudly).

Every provider family (channels, speech, translation, CRM, payments, stores) raises a
:class:`HablaError` whose ``transient`` flag says whether trying again can help. The
mapping from the outside world's failures is written once, here:

- an HTTP status (:func:`error_for_status`): 408, 425, 429 and 5xx are transient;
  ``Retry-After`` (seconds or an HTTP date) is kept on the error;
- a gRPC status code by name (:func:`error_for_grpc`): UNAVAILABLE, DEADLINE_EXCEEDED,
  RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN are transient;
- any exception (:func:`classify`): timeouts, refused or reset connections and a
  briefly locked SQLite file are transient; an SDK exception carrying an HTTP status
  or a gRPC code is mapped by it; anything else is permanent.

Adapters only add their provider's own codes (Meta's 130429, Azure's cancellation
reasons) on top of this.
"""

from __future__ import annotations

import asyncio
import email.utils
import sqlite3
import time
from typing import Any

TRANSIENT_STATUSES = frozenset({408, 425, 429})
TRANSIENT_GRPC = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNKNOWN"}
)


class HablaError(Exception):
    """A failure of something habla depends on, classified once.

    ``transient``: worth retrying (rate limit, 5xx, timeout, connection refused);
    ``retry_after``: seconds the provider asked us to wait, when it said so.
    """

    transient: bool = False

    def __init__(
        self, reason: str, *, transient: bool | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        if transient is not None:
            self.transient = transient
        self.retry_after = retry_after


class TransientError(HablaError):
    """Worth retrying: rate limit, 5xx, timeout, connection reset."""

    transient = True

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason, retry_after=retry_after)


class PermanentError(HablaError):
    """Retrying will not help: bad number, bad credentials, rejected content."""

    transient = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


class MediaError(HablaError):
    """Media could not be fetched or uploaded: too large, gone, or the provider is down."""


class SpeechError(HablaError):
    """Audio could not be transcribed or synthesized: bad input (permanent) or an
    engine outage (transient)."""


def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_STATUSES or status >= 500


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for_status(
    status: int, reason: str, retry_after: float | str | None = None
) -> HablaError:
    """The error for an HTTP status (``reason`` should name the provider)."""
    after = parse_retry_after(retry_after) if isinstance(retry_after, str) else retry_after
    if is_transient_status(status):
        return TransientError(reason, after)
    return PermanentError(reason)


def error_for_grpc(code_name: str, reason: str) -> HablaError:
    """The error for a gRPC status code, by its name (``StatusCode.UNAVAILABLE.name``)."""
    if code_name.upper() in TRANSIENT_GRPC:
        return TransientError(reason)
    return PermanentError(reason)


_NETWORK = (asyncio.TimeoutError, TimeoutError, ConnectionError)


def _status_of(exc: BaseException) -> int | None:
    """An HTTP status carried by an SDK exception, if any."""
    for attr in ("status", "status_code", "http_status", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None) or getattr(response, "status", None)
    return value if isinstance(value, int) and 100 <= value <= 599 else None


def _grpc_code(exc: BaseException) -> str | None:
    code = getattr(exc, "grpc_status_code", None)
    if code is None and callable(getattr(exc, "code", None)):
        try:
            code = exc.code()  # type: ignore[attr-defined]
        except Exception:
            code = None
    name = getattr(code, "name", None)
    return name if isinstance(name, str) else None


def _retry_after_of(exc: BaseException) -> float | None:
    headers: Any = getattr(exc, "headers", None) or getattr(
        getattr(exc, "response", None), "headers", None
    )
    try:
        raw = headers.get("Retry-After") if headers is not None else None
    except Exception:
        return None
    return parse_retry_after(raw) if isinstance(raw, str) else None


def classify(exc: BaseException, provider: str = "") -> HablaError:
    """Any exception as a :class:`HablaError` (an existing one is returned as is)."""
    if isinstance(exc, HablaError):
        return exc
    prefix = f"{provider}: " if provider else ""
    reason = f"{prefix}{type(exc).__name__}: {exc}".rstrip(": ")
    grpc = _grpc_code(exc)
    if grpc is not None:
        return error_for_grpc(grpc, reason)
    status = _status_of(exc)
    if status is not None:
        return error_for_status(status, reason, _retry_after_of(exc))
    if isinstance(exc, _NETWORK) or _is_network_error(exc) or _is_busy_database(exc):
        return TransientError(reason)
    return PermanentError(reason)


def _is_busy_database(exc: BaseException) -> bool:
    """SQLite's "database is locked" / "busy": another process holds the file briefly."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "locked" in text or "busy" in text
    return False


def _is_network_error(exc: BaseException) -> bool:
    """aiohttp, requests and urllib3 connection/timeout errors, without importing them."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names
        & {
            "ClientConnectionError",
            "ServerTimeoutError",
            "ServerDisconnectedError",
            "ClientPayloadError",
            "ConnectionError",
            "Timeout",
            "ReadTimeout",
            "ConnectTimeout",
            "NewConnectionError",
            "ProtocolError",
            "RetryError",
            "TimeoutError",  # a library's own (redis-py's has no builtin base)
            "ConnectionFailure",  # pymongo: unreachable, timed out, primary stepped down
            "AutoReconnect",
        }
    )
