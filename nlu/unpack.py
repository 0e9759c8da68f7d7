"""A trained model's files read at start-up without repeating what the last start did.

Rasa 3.6 loads a model archive (``.tar.gz``) by extracting it into a temporary folder,
moving its components into another and reading the domain Rasa persisted in it, which
it validates against the domain schema again. On the example bot that was 0.35 s of
extracting and 0.29 s of domain reading at every start. :func:`install` (done by the
engine with ``HABLA_FAST_LOAD``) changes two things:

* With a cache folder (``HABLA_GRAPH_CACHE``'s ``models/``), an archive is extracted
  once into ``models/<sha256 of the archive>``, beside it and renamed into place (two
  processes extracting the same archive race harmlessly; a half-extracted folder is
  never used), and Rasa's model storage reads the components from there. The key is
  the archive's content, so a new model (even at the same path) is extracted anew;
  the :data:`KEEP_MODELS` most recently used stay. A folder that cannot be written
  (read-only, full) leaves Rasa's own extraction, with a warning.
* The domain in the model (``domain_provider/domain.yml``, which Rasa wrote at training
  time from a domain it had validated) is read as Rasa reads it, without validating its
  YAML schema a second time (pykwalify: 0.26 s of the 0.29). ``tests/test_unpack.py``
  checks that the domain is equal to Rasa's read of it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

KEEP_MODELS = 2
"""Unpacked models kept (the most recently used): the served one and the one before."""

_originals: dict[str, Any] = {}
_cache: Path | None = None


def install(cache: Path | None = None) -> None:
    """Read models this way (idempotent; ``cache``: where archives are unpacked,
    None: Rasa extracts them at every load); :func:`uninstall` restores Rasa's."""
    global _cache
    from rasa.engine.storage.local_model_storage import LocalModelStorage
    from rasa.graph_components.providers.domain_provider import DomainProvider

    _cache = cache
    if not _originals:
        _originals["archive"] = LocalModelStorage.from_model_archive.__func__
        _originals["domain"] = rasas = DomainProvider.load.__func__

        @functools.wraps(rasas)  # its signature and annotations: Rasa's graph validation
        def load(cls: Any, *args: Any, **kwargs: Any) -> Any:  # reads them (training)
            return load_domain(cls, *args, **kwargs)

        LocalModelStorage.from_model_archive = classmethod(from_model_archive)
        DomainProvider.load = classmethod(load)


def uninstall() -> None:
    global _cache
    from rasa.engine.storage.local_model_storage import LocalModelStorage
    from rasa.graph_components.providers.domain_provider import DomainProvider

    _cache = None
    if _originals:
        LocalModelStorage.from_model_archive = classmethod(_originals.pop("archive"))
        DomainProvider.load = classmethod(_originals.pop("domain"))


def from_model_archive(cls: Any, storage_path: Path, model_archive_path: Any) -> Any:
    """``LocalModelStorage.from_model_archive``: the storage reads the archive's
    components from their unpacked folder in the cache (``storage_path``, Rasa's
    temporary folder, stays empty)."""
    from rasa.engine.storage.local_model_storage import MODEL_ARCHIVE_COMPONENTS_DIR

    archive = Path(model_archive_path)
    folder = None
    if _cache is not None:
        try:
            folder = unpacked(archive, _cache)
        except OSError as e:
            logger.warning("model %s not unpacked in %s (%s): Rasa extracts it", archive, _cache, e)
    if folder is None:
        return _originals["archive"](cls, storage_path, model_archive_path)
    return cls(folder / MODEL_ARCHIVE_COMPONENTS_DIR), cls._load_metadata(folder)


def unpacked(archive: Path, cache: Path) -> Path:
    """The folder ``archive`` is extracted in (extracted now if it is not yet)."""
    from rasa.engine.storage.local_model_storage import (
        MODEL_ARCHIVE_METADATA_FILE,
        LocalModelStorage,
    )

    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    folder = cache / digest.hexdigest()[:20]
    if (folder / MODEL_ARCHIVE_METADATA_FILE).is_file():
        os.utime(folder)  # recently used: kept when older models go
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=cache))
    try:
        LocalModelStorage._extract_archive_to_directory(archive, staging)  # Rasa's checks
        os.utime(staging)  # (extracting gave it the archive's time): used now
        os.rename(staging, folder)
    except OSError:
        if not (folder / MODEL_ARCHIVE_METADATA_FILE).is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("model %s unpacked in %s", archive.name, folder)
    models = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    models.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in models[KEEP_MODELS:]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def load_domain(
    cls: Any,
    config: dict[str, Any],
    model_storage: Any,
    resource: Any,
    execution_context: Any,
    **kwargs: Any,
) -> Any:
    """``DomainProvider.load``: the persisted ``domain.yml`` read and merged as Rasa's
    ``Domain.from_directory`` does, minus the schema validation Rasa already did before
    writing it. A resource holding anything else is read by Rasa's own code."""
    import rasa.shared.utils.io
    from rasa.shared.core.domain import Domain
    from rasa.shared.utils.validation import validate_training_data_format_version

    with model_storage.read_from(resource) as directory:
        files = sorted(p.name for p in Path(directory).iterdir())
        if files != ["domain.yml"]:
            return _originals["domain"](
                cls, config, model_storage, resource, execution_context, **kwargs
            )
        path = Path(directory) / "domain.yml"
        data = rasa.shared.utils.io.read_yaml(rasa.shared.utils.io.read_file(path))
    validate_training_data_format_version(data, str(path))  # warns as Rasa's read does
    return cls(model_storage, resource, Domain.from_dict(Domain.merge_domain_dicts(data, {})))
