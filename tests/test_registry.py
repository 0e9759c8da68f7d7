"""One registry mechanism: every provider family registered by name in
runtime/providers.py, a dotted path for custom classes, settings validated against it."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from rasa.core.tracker_store import TrackerStore

from channels.base import InputChannel
from commerce.crm.base import CRM
from commerce.orders import OrderStore
from commerce.payments.base import Payments
from habla import wiring
from i18n.detect import Detector
from i18n.translation import Translator
from runtime import providers
from runtime.coordination import Coordination
from runtime.registry import Registry, UnknownProvider
from runtime.settings import SettingsError, load_settings, settings_table
from voice.stt.base import SpeechToText
from voice.tts.base import TextToSpeech

PROJECT = Path(__file__).resolve().parents[1]

BASES: dict[str, type] = {
    "channel": InputChannel,
    "speech-to-text engine": SpeechToText,
    "text-to-speech engine": TextToSpeech,
    "language detector": Detector,
    "translator": Translator,
    "CRM": CRM,
    "payment provider": Payments,
    "order store": OrderStore,
    "tracker store": TrackerStore,
    "coordination backend": Coordination,
}


@pytest.mark.parametrize("registry", providers.ALL, ids=lambda r: r.family)
def test_every_registered_provider_loads_and_builds_itself(registry: Registry) -> None:
    base = BASES[registry.family]
    assert registry.names, registry.family
    for name in registry:
        cls: Any = registry.load(name, base)
        assert issubclass(cls, base)
        builder = inspect.getattr_static(cls, "from_settings", None)
        assert builder is not None, f"{cls.__name__} has no from_settings"
        assert not getattr(cls.from_settings, "__isabstractmethod__", False), cls


def test_a_custom_class_by_dotted_path() -> None:
    assert providers.STT.load("voice.stt.whisper.WhisperSTT", SpeechToText).__name__ == (
        "WhisperSTT"
    )
    with pytest.raises(UnknownProvider, match="is not a SpeechToText"):
        providers.STT.load("voice.tts.espeak.EspeakTTS", SpeechToText)
    with pytest.raises(UnknownProvider, match="cannot be loaded"):
        providers.STT.load("nowhere.stt.Missing", SpeechToText)
    with pytest.raises(UnknownProvider, match="built-in: whisper, google, azure"):
        providers.STT.load("vosk", SpeechToText)


def test_settings_take_their_choices_from_the_registries(tmp_path: Path) -> None:
    env = {"HABLA_BOT_DIR": str(PROJECT), "HABLA_STT": "vosk", "HABLA_CRM": "dynamics"}
    with pytest.raises(SettingsError) as err:
        load_settings(env=env)
    text = str(err.value)
    assert "voice.stt" in text and "off, whisper, google, azure" in text
    assert "commerce.crm" in text and "hubspot, salesforce, pipedrive, zoho" in text
    # a dotted path is a custom class: accepted by settings, loaded by the wiring
    s = load_settings(env={"HABLA_BOT_DIR": str(PROJECT), "HABLA_TTS": "acme.speech.AcmeTTS"})
    with pytest.raises(SettingsError, match="acme.speech.AcmeTTS' cannot be loaded"):
        wiring.build_tts(s)
    with pytest.raises(SettingsError) as err:
        load_settings(env={"HABLA_BOT_DIR": str(PROJECT), "HABLA_CHANNELS": "rest,telegram"})
    assert "'telegram' is not" in str(err.value)
    table = settings_table()
    assert "One of: off, whisper, google, azure, transcribe, or a dotted path" in table


def test_a_new_provider_is_one_registry_line() -> None:
    registry = Registry("speech-to-text engine", {"whisper": "voice.stt.whisper:WhisperSTT"})
    registry.register("again", "voice.stt.whisper:WhisperSTT")
    assert registry.names == ("whisper", "again")
    assert registry.load("again", SpeechToText) is registry.load("whisper", SpeechToText)


def test_the_wiring_builds_what_settings_name() -> None:
    s = load_settings(
        env={
            "HABLA_BOT_DIR": str(PROJECT),
            "HABLA_STT": "off",
            "HABLA_TTS": "espeak",
            "HABLA_TTS_VOICES": "pt=pt-br",
        }
    )
    assert wiring.build_stt(s) is None
    tts = wiring.build_tts(s)
    assert type(tts).__name__ == "EspeakTTS" and tts.voices == {"pt": "pt-br"}  # type: ignore[union-attr]
    assert wiring.build_crm(s) is None and wiring.build_payments(s) is None
    assert wiring.build_translator(s) is None
    assert type(wiring.build_detector(s)).__name__ == "LinguaDetector"
