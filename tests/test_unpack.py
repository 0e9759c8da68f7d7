"""nlu/unpack.py: a model archive is extracted once (keyed by its content) and read from
there with the same metadata, files and domain as Rasa's own extraction; the domain
Rasa persisted is read without validating its schema again, to the same Domain."""

from __future__ import annotations

import copy
import gzip
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rasa.engine.graph import ExecutionContext, GraphSchema
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource
from rasa.graph_components.providers.domain_provider import DomainProvider

from nlu import unpack


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    cache = tmp_path / "models"
    unpack.install(cache=cache)
    try:
        yield cache
    finally:
        unpack.uninstall()


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def storage_folder(storage: Any) -> Path:
    return Path(storage._storage_path)


def extractions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every archive Rasa's extraction is asked to extract from now on."""
    calls: list[Path] = []
    extract = LocalModelStorage._extract_archive_to_directory

    def counting(archive: Any, directory: Path) -> None:
        calls.append(Path(archive))
        extract(archive, directory)

    monkeypatch.setattr(LocalModelStorage, "_extract_archive_to_directory", counting)
    return calls


def test_an_archive_is_unpacked_once_and_read_as_rasa_reads_it(
    model_path: Path, installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extracted = extractions(monkeypatch)
    (tmp_path / "a").mkdir()
    ours, metadata = LocalModelStorage.from_model_archive(tmp_path / "a", model_path)
    assert extracted == [model_path]
    (tmp_path / "b").mkdir()
    again, _ = LocalModelStorage.from_model_archive(tmp_path / "b", model_path)
    assert extracted == [model_path]  # the second load read the unpacked folder
    assert storage_folder(again) == storage_folder(ours)
    assert storage_folder(ours).parent.parent == installed
    assert not any((tmp_path / "a").iterdir())  # Rasa's temporary storage is not used

    unpack.uninstall()
    (tmp_path / "rasa").mkdir()
    rasas, rasa_metadata = LocalModelStorage.from_model_archive(tmp_path / "rasa", model_path)
    assert files(storage_folder(ours)) == files(storage_folder(rasas))
    assert metadata.as_dict() == rasa_metadata.as_dict()


def test_the_key_is_the_archives_content_and_two_models_are_kept(
    model_path: Path, installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy elsewhere is the same model; the same model recompressed (other bytes) is
    unpacked anew; beyond KEEP_MODELS the least recently used folder goes."""
    copy = tmp_path / "copy.tar.gz"
    shutil.copy(model_path, copy)
    variants = [model_path, copy]
    for mtime in (1, 2):  # the same tar, a different gzip header: different bytes
        variant = tmp_path / f"variant{mtime}.tar.gz"
        with gzip.open(model_path) as tar, open(variant, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=mtime) as out:
                shutil.copyfileobj(tar, out)
        variants.append(variant)
    extracted = extractions(monkeypatch)
    folders = []
    for i, archive in enumerate(variants):
        (tmp_path / f"s{i}").mkdir()
        storage, _ = LocalModelStorage.from_model_archive(tmp_path / f"s{i}", archive)
        folders.append(storage_folder(storage).parent)
    assert extracted == [model_path, variants[2], variants[3]]
    assert folders[0] == folders[1] and len(set(folders)) == 3
    assert sorted(installed.iterdir()) == sorted(folders[2:])  # the oldest went
    assert unpack.KEEP_MODELS == 2


def test_a_cache_that_cannot_be_written_leaves_rasas_extraction(
    model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    unpack.install(cache=blocked / "models")
    try:
        (tmp_path / "storage").mkdir()
        storage, _ = LocalModelStorage.from_model_archive(tmp_path / "storage", model_path)
    finally:
        unpack.uninstall()
    assert storage_folder(storage) == tmp_path / "storage"
    assert any((tmp_path / "storage").iterdir())  # Rasa extracted it there
    assert "Rasa extracts it" in caplog.text


def test_the_persisted_domain_is_the_one_rasa_reads(
    model_path: Path, installed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Read without the schema validation, the domain in the model equals Rasa's read
    of it (its dict and its fingerprint); a resource holding other files is Rasa's."""
    storage, metadata = LocalModelStorage.from_model_archive(tmp_path, model_path)
    [node] = [n for n in metadata.predict_schema.nodes.values() if n.uses is DomainProvider]
    resource = node.resource
    context = ExecutionContext(GraphSchema({}), "test")
    ours = DomainProvider.load({}, storage, resource, context).provide_inference()
    unpack.uninstall()
    rasas = DomainProvider.load({}, storage, resource, context).provide_inference()
    rasas_dict = copy.deepcopy(rasas.as_dict())  # (Rasa's fingerprint() changes it)
    assert ours.as_dict() == rasas_dict and ours.fingerprint() == rasas.fingerprint()
    assert ours.responses and ours.slots and ours.forms

    caplog.set_level(logging.DEBUG)
    other = Resource("domain_provider_with_more")
    folder = tmp_path / "other" / other.name
    folder.mkdir(parents=True)
    shutil.copy(storage_folder(storage) / resource.name / "domain.yml", folder)
    (folder / "notes.txt").write_text("not a domain")
    unpack.install()
    called: list[str] = []
    original = unpack._originals["domain"]

    def rasa_load(*args: Any, **kwargs: Any) -> Any:
        called.append("rasa")
        return original(*args, **kwargs)

    unpack._originals["domain"] = rasa_load
    try:
        other_storage = LocalModelStorage(tmp_path / "other")
        domain = DomainProvider.load({}, other_storage, other, context).provide_inference()
    finally:
        unpack._originals["domain"] = original
    assert called == ["rasa"] and domain.as_dict() == rasas_dict
