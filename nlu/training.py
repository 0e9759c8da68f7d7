"""Train the bot when its files changed; reuse the model otherwise.

A model is named by the SHA-256 of everything that shapes it (domain, config, training
data and the Rasa version), so editing a story retrains and restarting does not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

TRAINING_INPUTS = ("domain.yml", "config.yml")
DATA_SUFFIXES = (".yml", ".yaml", ".md", ".json")


def training_files(bot_dir: Path) -> list[Path]:
    files = [bot_dir / name for name in TRAINING_INPUTS]
    domain_dir = bot_dir / "domain"  # Rasa also accepts a folder of domain files
    for folder in (bot_dir / "data", domain_dir):
        if folder.is_dir():
            files += sorted(p for p in folder.rglob("*") if p.suffix in DATA_SUFFIXES)
    return [f for f in files if f.is_file()]


def training_hash(bot_dir: Path) -> str:
    import rasa

    digest = hashlib.sha256(f"rasa {rasa.__version__}\n".encode())
    for path in training_files(bot_dir):
        digest.update(str(path.relative_to(bot_dir)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def model_path(bot_dir: Path, models_dir: Path) -> Path:
    return models_dir / f"habla-{training_hash(bot_dir)}.tar.gz"


def train(bot_dir: Path, models_dir: Path) -> Path:
    """Train unconditionally; the model appears atomically under its hash name."""
    from nlu.logs import load_rasa

    load_rasa()  # (what TensorFlow and Keras warn at import: recorded, not printed)
    import rasa.api

    target = model_path(bot_dir, models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    domain = bot_dir / "domain"
    with tempfile.TemporaryDirectory(dir=models_dir) as tmp:
        result = rasa.api.train(
            domain=str(domain if domain.is_dir() else bot_dir / "domain.yml"),
            config=str(bot_dir / "config.yml"),
            training_files=str(bot_dir / "data"),
            output=tmp,
            fixed_model_name="model",
            force_training=True,
        )
        if result.code != 0 or not result.model:
            raise RuntimeError(f"training failed (code {result.code}); see the log above")
        shutil.move(result.model, target.with_suffix(".part"))
        os.replace(target.with_suffix(".part"), target)
    logger.info("trained %s", target)
    return target


def ensure_model(bot_dir: Path, models_dir: Path) -> Path:
    """The model for the bot's current files, training it only if it is missing."""
    bot_dir = bot_dir.resolve()
    target = model_path(bot_dir, models_dir)
    if target.exists():
        logger.info("bot files unchanged; reusing %s", target.name)
        return target
    logger.info("bot files changed; training %s", target.name)
    return train(bot_dir, models_dir)
