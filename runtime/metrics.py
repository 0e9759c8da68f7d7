"""Prometheus metrics, in multi-process mode: the server and its engine workers write
to one folder, and ``/metrics`` adds them up.

``use_directory`` is called once per process before any metric is written: the
server (``habla/server.py``) chooses ``<data dir>/metrics/<host>-<pid>``, empties it
and removes the folders of this machine's servers that no longer run; an engine worker (a spawned
process) inherits ``PROMETHEUS_MULTIPROC_DIR`` and joins the same folder. A worker
that exits is marked dead (its live gauges leave the sum, its counters stay).

Names follow Prometheus' conventions (``habla_`` prefix, the unit in the name,
``_total`` for counters); labels are few-valued (channel, outcome, stage, engine,
provider): never a phone number, message or conversation id. Gauges that read a
store (outbox, inbox, active calls) are computed when scraped (:class:`StoreGauges`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

logger = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # every Prometheus version reads it

# seconds: a Rasa turn is ~15 ms of CPU; a voice note's turn with speech takes seconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
AUDIO_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

TURNS = Counter(
    "habla_turns_total",
    "Turns that ended, by channel and outcome (answered, failed, deferred: replies wait "
    "for the provider, postponed: left to the leases, elsewhere: another server had it).",
    ["channel", "outcome"],
)
TURN_SECONDS = Histogram(
    "habla_turn_duration_seconds",
    "Time of a whole turn under the conversation's lock, by channel.",
    ["channel"],
    buckets=LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "habla_turn_stage_duration_seconds",
    "Time of one stage of a turn (its retries included), by stage.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
TURNS_IN_PROGRESS = Gauge(
    "habla_turns_in_progress",
    "Turns running now, by channel (in the server processes alive).",
    ["channel"],
    multiprocess_mode="livesum",
)
ENGINE_IN_PROGRESS = Gauge(
    "habla_engine_turns_in_progress",
    "Rasa turns running now in engine worker processes alive, by worker.",
    ["worker"],
    multiprocess_mode="livesum",
)
ENGINE_SECONDS = Histogram(
    "habla_engine_handle_duration_seconds",
    "Time Rasa took for one message inside an engine worker process (NLU, policies, "
    "actions; without the trip to the worker), by worker.",
    ["worker"],
    buckets=LATENCY_BUCKETS,
)
DELIVERIES = Counter(
    "habla_deliveries_total",
    "Replies handed to a provider, by channel and outcome (sent, failed: given up, "
    "deferred: the provider was down, tried again later).",
    ["channel", "outcome"],
)
DELIVERY_STATUSES = Counter(
    "habla_delivery_status_reports_total",
    "Delivery statuses providers reported (status callbacks: sent, delivered, read, "
    "failed, ...), by status.",
    ["status"],
)
RETRIES = Counter(
    "habla_provider_retries_total",
    "Provider calls tried again after a transient failure (429, 5xx, timeout), by "
    "provider family (channel, crm, payments, ...) and provider.",
    ["family", "provider"],
)
SPEECH_SECONDS = Histogram(
    "habla_speech_processing_seconds",
    "Time a speech engine took for one clip, by kind (stt, tts) and engine.",
    ["kind", "engine"],
    buckets=LATENCY_BUCKETS,
)
SPEECH_AUDIO_SECONDS = Histogram(
    "habla_speech_audio_seconds",
    "Length of the audio a speech engine heard (stt) or made (tts), by kind and engine.",
    ["kind", "engine"],
    buckets=AUDIO_BUCKETS,
)
SPEECH_ERRORS = Counter(
    "habla_speech_errors_total",
    "Speech engine calls that failed, by kind (stt, tts) and engine.",
    ["kind", "engine"],
)

ALL = (
    TURNS,
    TURN_SECONDS,
    STAGE_SECONDS,
    TURNS_IN_PROGRESS,
    ENGINE_IN_PROGRESS,
    ENGINE_SECONDS,
    DELIVERIES,
    DELIVERY_STATUSES,
    RETRIES,
    SPEECH_SECONDS,
    SPEECH_AUDIO_SECONDS,
    SPEECH_ERRORS,
)

_directory: Path | None = None


def directory() -> Path | None:
    """The folder this process writes its metrics to (None: not set up yet)."""
    return _directory


def use_directory(path: Path, *, clean: bool = False) -> Path:
    """Write this process's metrics to ``path`` (multi-process mode), from now on.

    ``clean``: the server's start: ``path`` is emptied, and the sibling folders of this
    machine's servers that no longer run are removed (another machine's or container's,
    sharing the data folder, are left alone: their pids cannot be checked from here).
    Idempotent: a process that already writes somewhere keeps that folder (several test
    servers share one process).
    """
    global _directory
    if _directory is not None:
        return _directory
    path.mkdir(parents=True, exist_ok=True)
    if clean:
        for old in path.glob("*.db"):
            old.unlink(missing_ok=True)
        host, _, _ = path.name.rpartition("-")
        for sibling in path.parent.glob(f"{host}-*"):
            pid = sibling.name.removeprefix(f"{host}-")
            if sibling != path and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(sibling, ignore_errors=True)
    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus_client chose its value class at import; labelled metrics create
        # their values on first use: any used before now start again, in the folder
        for metric in ALL:
            metric.clear()
        os.environ[ENV] = str(path)
        values.ValueClass = values.MultiProcessValue()
    os.environ[ENV] = str(path)  # engine workers (spawned) inherit it
    _directory = path
    return path


def join_from_environment() -> None:
    """An engine worker: write to the folder its server chose (inherited)."""
    inherited = os.environ.get(ENV)
    if inherited:
        use_directory(Path(inherited))


def server_directory(data_dir: Path) -> Path:
    """``<data dir>/metrics/<host>-<pid>``: servers sharing a data folder (several
    processes, or containers that are each pid 1) never share a metrics folder."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
    return data_dir / "metrics" / f"{host}-{os.getpid()}"


def process_gone(pid: int | None) -> None:
    """A process that wrote here has exited: its live gauges leave the sum."""
    if pid is not None and _directory is not None:
        mark_process_dead(pid, str(_directory))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- recording


def turn_ended(channel: str, outcome: str, seconds: float | None = None) -> None:
    TURNS.labels(channel, outcome).inc()
    if seconds is not None:
        TURN_SECONDS.labels(channel).observe(seconds)


@contextmanager
def stage_timer(stage: str) -> Iterator[None]:
    began = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage).observe(time.perf_counter() - began)


def delivered(channel: str, outcome: str) -> None:
    DELIVERIES.labels(channel, outcome).inc()


def delivery_status(status: str) -> None:
    DELIVERY_STATUSES.labels(status[:24] or "unknown").inc()


def retried(family: str, provider: str) -> None:
    RETRIES.labels(family or "other", provider or "other").inc()


def speech(kind: str, engine: str, seconds: float, audio_s: float | None) -> None:
    """One clip a speech engine handled: ``seconds`` of work, ``audio_s`` of audio."""
    SPEECH_SECONDS.labels(kind, engine).observe(seconds)
    if audio_s is not None and audio_s > 0:
        SPEECH_AUDIO_SECONDS.labels(kind, engine).observe(audio_s)


def speech_failed(kind: str, engine: str) -> None:
    SPEECH_ERRORS.labels(kind, engine).inc()


# ---------------------------------------------------------------- scraping

Reading = Callable[[], Awaitable[dict[tuple[str, ...], float]]]


class StoreGauges:
    """Gauges read from the stores when Prometheus scrapes (not kept in memory, so
    they are right whichever process or server changed the store)."""

    def __init__(self) -> None:
        self._readings: list[tuple[str, str, list[str], Reading]] = []

    def add(self, name: str, doc: str, labels: list[str], read: Reading) -> None:
        self._readings.append((name, doc, labels, read))

    async def collect(self) -> list[Metric]:
        out: list[Metric] = []
        for name, doc, labels, read in self._readings:
            family = GaugeMetricFamily(name, doc, labels=labels)
            try:
                samples = await read()
            except Exception as e:  # a store briefly down: the scrape still answers
                logger.warning("metrics: %s not read (%s)", name, e)
                continue
            for key, value in samples.items():
                family.add_metric(list(key), value)
            out.append(family)
        return out


class _Fixed:
    """A collector that yields metrics already read (the store gauges of one scrape)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


async def exposition(gauges: StoreGauges | None = None) -> bytes:
    """Every process's metrics added up, and the store gauges: the text format. The
    folder's files are read on a thread (file I/O stays off the event loop)."""
    read = await gauges.collect() if gauges is not None else []
    return await asyncio.to_thread(_render, read)


def _render(read: list[Metric]) -> bytes:
    registry = CollectorRegistry()
    if _directory is not None:
        MultiProcessCollector(registry, path=str(_directory))
    registry.register(_Fixed(read))
    return bytes(generate_latest(registry))
