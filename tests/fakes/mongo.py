"""A real MongoDB wire-protocol server for tests: SecantusDB's ``secantusd-py``.

It runs as a subprocess on a loopback port the kernel picks (``--port 0``; the port
is read from its "listening on" log line, so there is no race for a free port), with
its data in a temporary folder and an empty config file (so no ``secantusd.toml`` from
the working directory or the home folder is picked up).

The binary is ``$HABLA_TEST_SECANTUSD`` or ``<repo>/.tools/secantus/bin/secantusd-py``.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from types import TracebackType
from typing import IO

PROJECT = Path(__file__).resolve().parents[2]
DEFAULT_BINARY = PROJECT / ".tools" / "secantus" / "bin" / "secantusd-py"
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def secantusd_path() -> Path:
    """Where the server binary should be."""
    return Path(os.environ.get("HABLA_TEST_SECANTUSD") or DEFAULT_BINARY)


def secantusd_binary() -> Path | None:
    """The server binary, or None when it is not installed."""
    path = secantusd_path()
    return path if path.is_file() and os.access(path, os.X_OK) else None


class SecantusServer:
    """``async with SecantusServer(binary, tmp_dir) as server: server.url``."""

    def __init__(self, binary: Path, workdir: Path, host: str = "127.0.0.1") -> None:
        self.binary, self.workdir, self.host = binary, workdir, host
        self.port = 0
        self.url = ""
        self.log_path = workdir / "secantusd.log"
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def start(self, timeout: float = 30.0) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "secantusd.toml"
        config.write_text("")
        self._log = self.log_path.open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            str(self.binary),
            "--config",
            str(config),
            "--host",
            self.host,
            "--port",
            "0",
            "--storage-path",
            str(self.workdir / "data"),
            "--log-level",
            "INFO",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not self.port:
            found = _LISTENING.search(self.log_path.read_text(errors="replace"))
            if found:
                self.port = int(found.group(2))
            elif self._proc.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(
                    f"secantusd did not start; its log:\n{self.log_path.read_text()[-2000:]}"
                )
            else:
                await asyncio.sleep(0.05)
        _, writer = await asyncio.open_connection(self.host, self.port)
        writer.close()
        await writer.wait_closed()
        self.url = f"mongodb://{self.host}:{self.port}/"
        return self.url

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop the server. The data is throwaway, so by default it is killed at once
        (a clean shutdown checkpoints WiredTiger, ~2 s); ``grace_s`` > 0: SIGTERM
        first and wait that long before killing."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if grace_s > 0:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), grace_s)
                except asyncio.TimeoutError:
                    pass
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> SecantusServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
