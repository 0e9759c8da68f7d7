"""Rasa in worker processes: every core runs turns, the server process only does I/O.

A Rasa turn is ~15 ms of CPU (NLU, then policies); in one process that caps a server
at one core and stalls its event loop while a turn runs. :class:`WorkerPoolEngine`
starts N processes, each with its own loaded model, tracker store connection and
in-process actions. A conversation is pinned to one worker (a stable hash of its id),
so its turns stay in order and its state has a single writer.

The server and a worker talk over a socket pair with length-prefixed pickled frames,
awaited on both sides. A worker that dies fails its in-flight turns with a transient
error (the turn retries them) and is restarted on the next message. What a worker
builds (engine, tracker store, the Commerce its actions use) comes from the
composition root, passed in as ``setup``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import pickle
import socket
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from nlu.engine import Engine
from runtime import logs, metrics
from runtime.errors import PermanentError, TransientError, classify
from runtime.messages import BotReply, InboundMessage
from runtime.settings import Settings

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")
READY_TIMEOUT_S = 600.0  # loading TensorFlow and a model on a busy machine


class EngineWorkerError(PermanentError):
    """The turn failed inside the worker (its traceback is in the worker's log)."""


class EngineWorkerGone(TransientError):
    """The worker died with the turn in flight: it is restarted, the turn retried."""


WorkerSetup = Callable[[Settings, Path], AbstractAsyncContextManager[Engine]]
"""Builds a worker's engine (habla/wiring.py ``worker_engine``): picklable by name."""


async def _write(writer: asyncio.StreamWriter, frame: Any) -> None:
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(data)) + data)
    await writer.drain()


async def _read(reader: asyncio.StreamReader) -> Any:
    """The next frame, or None when the other side has gone."""
    try:
        (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        return pickle.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def worker_main(
    sock: socket.socket, settings: Settings, model_path: str, setup: WorkerSetup
) -> None:
    """Entry point of a worker process."""
    import signal

    from nlu.logs import configure_logging

    # Ctrl-C reaches the whole process group: the server finishes its turns, then stops us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.server.log_level, fmt=settings.server.log_format)
    metrics.join_from_environment()  # the server's metrics folder (inherited)
    asyncio.run(_serve(sock, settings, Path(model_path), setup))


async def _serve(
    sock: socket.socket, settings: Settings, model_path: Path, setup: WorkerSetup
) -> None:
    async with setup(settings, model_path) as engine:
        await _answer(sock, engine, multiprocessing.current_process().name.rpartition("-")[2])


async def _answer(sock: socket.socket, engine: Engine, worker: str = "0") -> None:
    reader, writer = await asyncio.open_connection(sock=sock)
    await _write(writer, ("ready", True, None))
    ops: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "handle": engine.handle,
    }
    running: set[asyncio.Task[None]] = set()

    in_progress = metrics.ENGINE_IN_PROGRESS.labels(worker)
    seconds = metrics.ENGINE_SECONDS.labels(worker)

    async def run(call_id: int, op: str, arg: Any, turn: str) -> None:
        logs.use_turn(turn)  # (this task's own context) the server's turn id
        in_progress.inc()
        began = time.perf_counter()
        try:
            frame = (call_id, True, await ops[op](arg))
            seconds.observe(time.perf_counter() - began)
        except Exception as e:
            logger.exception("engine worker: %s failed", op)
            frame = (call_id, False, (f"{type(e).__name__}: {e}", classify(e).transient))
        finally:
            in_progress.dec()
        await _write(writer, frame)

    while (frame := await _read(reader)) is not None:
        call_id, op, arg, turn = frame
        if op == "stop":
            break
        task = asyncio.create_task(run(call_id, op, arg, turn))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running, return_exceptions=True)
    writer.close()


class _Worker:
    def __init__(
        self, index: int, settings: Settings, model_path: Path, setup: WorkerSetup
    ) -> None:
        self.index, self.settings, self.model_path, self.setup = index, settings, model_path, setup
        self.process: Any = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count()
        self.reader_task: asyncio.Task[None] | None = None
        self.starting = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return self.writer is not None and self.process is not None and self.process.is_alive()

    async def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # no forked copies of the server's loop
        parent, child = socket.socketpair()
        self.process = ctx.Process(
            target=worker_main,
            args=(child, self.settings, str(self.model_path), self.setup),
            name=f"habla-engine-{self.index}",
            daemon=True,
        )
        await asyncio.to_thread(self.process.start)
        child.close()
        reader, writer = await asyncio.open_connection(sock=parent)
        ready = await asyncio.wait_for(_read(reader), READY_TIMEOUT_S)
        if ready is None:
            writer.close()
            raise EngineWorkerGone(f"engine worker {self.index} exited while loading")
        self.writer = writer
        self.reader_task = asyncio.create_task(self._receive(reader))
        logger.info("engine worker %d ready (pid %s)", self.index, self.process.pid)

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        while (frame := await _read(reader)) is not None:
            call_id, ok, result = frame
            future = self.pending.pop(call_id, None)
            if future is None or future.done():
                continue
            if ok:
                future.set_result(result)
            else:
                reason, transient = result
                error = EngineWorkerGone(reason) if transient else EngineWorkerError(reason)
                future.set_exception(error)
        self.writer = None
        if self.process is not None:  # its live gauges leave the sum (a restart's pid is new)
            metrics.process_gone(self.process.pid)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(EngineWorkerGone(f"engine worker {self.index} exited"))
        self.pending.clear()

    async def call(self, op: str, arg: Any) -> Any:
        if not self.alive:
            async with self.starting:
                if not self.alive:
                    if self.process is not None:
                        logger.error("engine worker %d died; restarting it", self.index)
                    await self.start()
        assert self.writer is not None
        call_id = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        await _write(self.writer, (call_id, op, arg, logs.current_turn()))
        return await future

    async def stop(self) -> None:
        if self.writer is not None:
            try:
                await _write(self.writer, (0, "stop", None, ""))
            except ConnectionError:
                pass
        if self.process is not None:
            await asyncio.to_thread(self.process.join, 30)
            if self.process.is_alive():
                self.process.kill()
                await asyncio.to_thread(self.process.join, 5)
        if self.reader_task is not None:
            await asyncio.gather(self.reader_task, return_exceptions=True)


class WorkerPoolEngine(Engine):
    def __init__(
        self, model_path: Path, settings: Settings, workers: int, setup: WorkerSetup
    ) -> None:
        self.workers = [_Worker(i, settings, model_path, setup) for i in range(workers)]

    async def load(self) -> None:
        await asyncio.gather(*(w.start() for w in self.workers if not w.alive))

    def bind_tracker_store(self, tracker_store: Any) -> None:
        """Each worker opens the configured store itself; nothing to share."""

    def _worker(self, conversation_id: str) -> _Worker:
        return self.workers[zlib.crc32(conversation_id.encode()) % len(self.workers)]

    async def handle(self, msg: InboundMessage) -> list[BotReply]:
        return list(await self._worker(msg.conversation_id).call("handle", msg))

    async def close(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers))
