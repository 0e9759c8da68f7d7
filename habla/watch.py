"""``habla run --watch``: retrain when the bot's files change and swap the model in.

:class:`Watcher` polls the modification times of the training files (``domain.yml``
or ``domain/``, ``config.yml``, ``data/``; nlu/training.py ``training_files``) off the
event loop. When they changed and then stayed unchanged for one more poll (an editor
saving several files), it trains in a subprocess (``nlu/training.py``
``ensure_model``: the server keeps serving on both cores' spare time), loads the new
model beside the current one and swaps it in between turns (``Runtime.reload``). A
training or load that fails is logged with its reason and the current model stays; the
next change tries again. Actions (``actions/*.py``) are not reloaded: restart for those.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from nlu.training import training_files

logger = logging.getLogger(__name__)
PROJECT = str(Path(__file__).resolve().parent.parent)  # (where nlu/ is importable from)

TRAIN = (
    "import sys; from pathlib import Path; from nlu.logs import configure_logging; "
    "configure_logging('WARNING'); from nlu.training import ensure_model; "
    "print(ensure_model(Path(sys.argv[1]), Path(sys.argv[2])))"
)


class TrainingFailed(Exception):
    pass


def snapshot(bot_dir: Path) -> dict[str, int]:
    """Each training file's modification time (and size: a same-second rewrite shows)."""
    out = {}
    for path in training_files(bot_dir):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        out[str(path)] = st.st_mtime_ns ^ (st.st_size << 1)
    return out


async def train_in_subprocess(bot_dir: Path, models_dir: Path) -> Path:
    """The model for the bot's current files, trained by another process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        TRAIN,
        str(bot_dir),
        str(models_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=PROJECT,
    )
    out, err = await proc.communicate()
    lines = out.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = err.decode(errors="replace").strip().splitlines()[-6:]
        raise TrainingFailed("; ".join(tail) or f"exit code {proc.returncode}")
    return Path(lines[-1])


class Watcher:
    """Watches ``bot_dir`` for ``runtime`` (habla/server.py ``Runtime``, ready)."""

    def __init__(
        self, runtime: Any, bot_dir: Path, models_dir: Path, interval_s: float = 1.0
    ) -> None:
        self.runtime, self.bot_dir, self.models_dir = runtime, bot_dir, models_dir
        self.interval_s = interval_s
        self.model: Path | None = None
        self.reloads = 0
        self.failures: list[str] = []
        self.watching = asyncio.Event()  # set once the files' first state is known
        self.changed = asyncio.Event()  # set after each attempt (tests wait on it)

    async def run(self) -> None:
        seen = await asyncio.to_thread(snapshot, self.bot_dir)
        self.watching.set()
        while True:
            await asyncio.sleep(self.interval_s)
            now = await asyncio.to_thread(snapshot, self.bot_dir)
            if now == seen:
                continue
            while True:  # wait until the files stay the same for one poll
                await asyncio.sleep(self.interval_s)
                later = await asyncio.to_thread(snapshot, self.bot_dir)
                if later == now:
                    break
                now = later
            seen = now
            await self.retrain()

    async def retrain(self) -> None:
        logger.info("bot files changed: training (the current model keeps serving)")
        try:
            model = await train_in_subprocess(self.bot_dir, self.models_dir)
            if model != self.model:
                await self.runtime.reload(model)
                self.model = model
                self.reloads += 1
        except Exception as e:
            reason = str(e) or type(e).__name__
            self.failures.append(reason)
            logger.error("training or loading the changed bot failed; still serving the "
                         "previous model: %s", reason)  # fmt: skip
        finally:
            self.changed.set()
