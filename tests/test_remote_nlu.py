"""Remote NLU components (nlu/remote) against local fakes of Dialogflow ES (gRPC),
Wit.ai and Azure CLU (HTTP): the provider's answer used when it is confident, the local
classifier's kept (with the reason) when it is not, or is down, slow or refuses the
credentials; what each fake received (text, language, credentials); the check
``habla validate`` calls; Rasa's recipe taking the components; the parse off the loop."""

from __future__ import annotations

import asyncio
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import yaml
from rasa.engine.graph import ExecutionContext, GraphSchema
from rasa.engine.storage.local_model_storage import LocalModelStorage
from rasa.engine.storage.resource import Resource
from rasa.shared.nlu.training_data.message import Message
from rasa.shared.nlu.training_data.training_data import TrainingData

from nlu.engine import parse_in_thread
from nlu.parse_cache import install_parse_cache
from nlu.remote.base import RemoteIntentClassifier, has_remote_nlu
from nlu.remote.check import check_remote_nlu
from nlu.remote.clu import CLUIntentClassifier
from nlu.remote.dialogflow import DialogflowIntentClassifier
from nlu.remote.wit import WitIntentClassifier
from tests.fakes.remote_nlu import Answer, FakeCLU, FakeDialogflow, FakeWit

INTENTS = ("greet", "affirm", "check_product", "order_status")


def build(cls: type[RemoteIntentClassifier], tmp_path: Path, **config: Any) -> Any:
    """Trained (the intents recorded in model storage) and loaded, as Rasa does."""
    (tmp_path / "model").mkdir(parents=True, exist_ok=True)
    storage = LocalModelStorage(tmp_path / "model")
    resource = Resource(cls.__name__)
    context = ExecutionContext(GraphSchema({}), "test")
    full = {**cls.get_default_config(), **config}
    examples = [Message(data={"text": f"example {i}", "intent": i}) for i in INTENTS]
    cls.create(full, storage, resource, context).train(TrainingData(examples))
    return cls.load(full, storage, resource, context)


def local(
    text: str, language: str = "es", original: str | None = None, intent: str = "greet"
) -> Message:
    """A message as DIETClassifier leaves it, with habla's language metadata."""
    metadata: dict[str, Any] = {"language": {"code": language, "reason": "detected"}}
    if original is not None:
        metadata["original_text"] = original
    m = Message(data={"text": text, "metadata": metadata})
    m.set("intent", {"name": intent, "confidence": 0.41}, add_to_output=True)
    ranking = [{"name": intent, "confidence": 0.41}, {"name": "affirm", "confidence": 0.3}]
    m.set("intent_ranking", ranking, add_to_output=True)
    m.set("entities", [{"entity": "size", "value": "L", "start": 0, "end": 1}], add_to_output=True)
    return m


class Harness(ABC):
    """One provider's fake and component, behind the same few verbs."""

    name: str
    cls: type[RemoteIntentClassifier]
    fake: Any

    @abstractmethod
    async def start(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The fake started and the component pointed at it."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The component's options for this fake."""

    def script(self, text: str, answer: Answer) -> None:
        self.fake.answers[text] = answer

    @abstractmethod
    def received(self) -> list[tuple[str, str, str | None]]:
        """(text, language, credential) of each request the fake got."""

    async def go_down(self) -> None:
        await self.fake.go_down()

    def slow_down(self) -> None:
        self.fake.delay_next(30)

    @abstractmethod
    def wrong_credentials(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make the component's credentials ones the fake refuses."""


class DialogflowHarness(Harness):
    name, cls = "dialogflow", DialogflowIntentClassifier

    async def start(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fake = FakeDialogflow("shop-agent")
        await self.fake.start()

    def config(self) -> dict[str, Any]:
        return {"project_id": "shop-agent", "endpoint": self.fake.target, "insecure": True}

    def received(self) -> list[tuple[str, str, str | None]]:
        for r in self.fake.requests:
            assert r.session.startswith("projects/shop-agent/agent/sessions/")
        return [
            (r.query_input.text.text, r.query_input.text.language_code, None)
            for r in self.fake.requests
        ]

    async def go_down(self) -> None:
        await self.fake.close()

    def slow_down(self) -> None:
        self.fake.hold_s = 30

    def wrong_credentials(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fake.fail_next(grpc.StatusCode.UNAUTHENTICATED)


class WitHarness(Harness):
    name, cls = "wit", WitIntentClassifier

    async def start(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fake = FakeWit({"en-app": "wit-token-en", "es-app": "wit-token-es"})
        await self.fake.start()
        monkeypatch.setenv("WIT_ACCESS_TOKEN", "wit-token-en")
        monkeypatch.setenv("WIT_ACCESS_TOKEN_ES", "wit-token-es")

    def config(self) -> dict[str, Any]:
        return {"base_url": self.fake.url, "apps": {"es": "WIT_ACCESS_TOKEN_ES"}}

    def received(self) -> list[tuple[str, str, str | None]]:
        out = []
        for r in self.fake.requests:
            assert r["params"]["v"] == "20240304"
            locale = json.loads(r["params"]["context"])["locale"]
            out.append((r["params"]["q"], locale, r["app"]))
        return out

    def wrong_credentials(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("WIT_ACCESS_TOKEN_ES", "revoked")


class CLUHarness(Harness):
    name, cls = "clu", CLUIntentClassifier

    async def start(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fake = FakeCLU("azure-key-1")
        await self.fake.start()
        monkeypatch.setenv("AZURE_LANGUAGE_ENDPOINT", self.fake.url)
        monkeypatch.setenv("AZURE_LANGUAGE_KEY", "azure-key-1")

    def config(self) -> dict[str, Any]:
        return {"project_name": "shop", "deployment_name": "production"}

    def received(self) -> list[tuple[str, str, str | None]]:
        out = []
        for r in self.fake.requests:
            assert r["api_version"] == "2023-04-01"
            assert r["body"]["parameters"]["stringIndexType"] == "UnicodeCodePoint"
            item = r["body"]["analysisInput"]["conversationItem"]
            out.append((item["text"], item["language"], r["key"]))
        return out

    def wrong_credentials(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("AZURE_LANGUAGE_KEY", "revoked")


CREDENTIAL = {"dialogflow": None, "wit": "es-app", "clu": "azure-key-1"}


@pytest.fixture(params=[DialogflowHarness, WitHarness, CLUHarness], ids=lambda h: h.name)
async def provider(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    harness: Harness = request.param()
    await harness.start(monkeypatch)
    yield harness
    await harness.fake.close()


async def run(component: Any, message: Message) -> Message:
    """``process`` off the loop, as habla runs it (the fakes serve on this loop)."""
    [out] = await asyncio.to_thread(component.process, [message])
    return out


async def test_a_confident_answer_replaces_the_local_one(provider: Harness, tmp_path: Path) -> None:
    component = build(provider.cls, tmp_path, threshold=0.7, **provider.config())
    provider.script("quiero la sudadera", Answer("check_product", 0.93, {"product": "sudadera"}))
    out = await run(component, local("quiero la sudadera"))

    assert provider.received() == [("quiero la sudadera", "es", CREDENTIAL[provider.name])]
    assert out.get("intent") == {"name": "check_product", "confidence": 0.93}
    assert out.get("intent_ranking")[0] == {"name": "check_product", "confidence": 0.93}
    product = [e for e in out.get("entities") if e["entity"] == "product"]
    assert product == [
        {
            "entity": "product",
            "value": "sudadera",
            "start": 10,
            "end": 18,
            "extractor": provider.cls.__name__,
            **({"confidence": product[0]["confidence"]} if "confidence" in product[0] else {}),
        }
    ]
    assert [e["entity"] for e in out.get("entities")] == ["size", "product"]  # local kept
    record = out.get("nlu_provider")
    assert record["name"] == provider.name and record["used"] is True
    assert record["reason"] == "confident" and record["language"] == "es"
    assert "nlu_provider" in out.as_dict(only_output_properties=True)  # reaches the tracker


async def test_below_the_threshold_the_local_result_is_kept(
    provider: Harness, tmp_path: Path
) -> None:
    component = build(provider.cls, tmp_path, threshold=0.7, **provider.config())
    provider.script("vale", Answer("affirm", 0.35))
    out = await run(component, local("vale"))

    assert out.get("intent") == {"name": "greet", "confidence": 0.41}
    assert out.get("intent_ranking")[0]["name"] == "greet"
    assert [e["entity"] for e in out.get("entities")] == ["size"]
    assert out.get("nlu_provider") | {"ms": 0} == {
        "name": provider.name,
        "used": False,
        "language": "es",
        "reason": "low_confidence",
        "intent": "affirm",
        "confidence": 0.35,
        "ms": 0,
    }


async def test_an_intent_the_domain_does_not_know_is_not_used_unless_mapped(
    provider: Harness, tmp_path: Path
) -> None:
    provider.script("cancela mi pedido", Answer("order.cancel", 0.99))
    plain = build(provider.cls, tmp_path / "a", **provider.config())
    out = await run(plain, local("cancela mi pedido"))
    assert out.get("intent")["name"] == "greet"
    assert out.get("nlu_provider")["reason"] == "unknown_intent"
    assert out.get("nlu_provider")["intent"] == "order.cancel"

    mapped = build(
        provider.cls,
        tmp_path / "b",
        intent_map={"order.cancel": "order_status"},
        **provider.config(),
    )
    out = await run(mapped, local("cancela mi pedido"))
    assert out.get("intent") == {"name": "order_status", "confidence": 0.99}


async def test_a_provider_that_is_down_leaves_the_local_result(
    provider: Harness, tmp_path: Path
) -> None:
    component = build(provider.cls, tmp_path, **provider.config())
    await provider.go_down()
    out = await run(component, local("hola"))
    assert out.get("intent") == {"name": "greet", "confidence": 0.41}
    record = out.get("nlu_provider")
    assert record["used"] is False and record["reason"] == "unavailable", record


async def test_a_slow_provider_times_out_and_the_local_result_is_kept(
    provider: Harness, tmp_path: Path
) -> None:
    component = build(provider.cls, tmp_path, timeout_s=0.3, **provider.config())
    provider.script("hola", Answer("greet", 0.99))
    provider.slow_down()
    out = await run(component, local("hola", intent="affirm"))
    assert out.get("intent")["name"] == "affirm"
    record = out.get("nlu_provider")
    assert record["used"] is False and record["reason"] == "timeout", record
    assert len(provider.received()) == 1  # asked once: no retries past the budget


async def test_refused_credentials_leave_the_local_result(
    provider: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    component = build(provider.cls, tmp_path, **provider.config())
    provider.script("hola", Answer("affirm", 0.99))
    provider.wrong_credentials(monkeypatch)
    out = await run(component, local("hola"))
    assert out.get("intent")["name"] == "greet"
    record = out.get("nlu_provider")
    assert record["used"] is False and record["reason"] == "auth", record
    assert "revoked" not in json.dumps(record)  # no secret in what is recorded


async def test_the_users_own_words_in_their_language_or_the_translation(
    provider: Harness, tmp_path: Path
) -> None:
    """habla translated a German message for the local model: the provider, which has
    English and Spanish only, gets the English text; a Spanish one its own words."""
    component = build(
        provider.cls, tmp_path, languages=["en", "es"], default_language="en", **provider.config()
    )
    await run(
        component, local("where is my order", language="de", original="wo ist meine Bestellung")
    )
    await run(component, local("hola", language="es", original="hola"))
    received = provider.received()
    assert [(text, lang) for text, lang, _ in received] == [
        ("where is my order", "en"),
        ("hola", "es"),
    ]
    if provider.name == "wit":  # one Wit app per language
        assert [app for *_, app in received] == ["en-app", "es-app"]


async def test_payloads_and_empty_texts_are_not_sent(provider: Harness, tmp_path: Path) -> None:
    component = build(provider.cls, tmp_path, **provider.config())
    out = await run(component, local("/order_status"))
    assert provider.received() == [] and out.get("nlu_provider") is None


async def test_wit_entity_role_and_ranking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    harness = WitHarness()
    await harness.start(monkeypatch)
    try:
        component = build(WitIntentClassifier, tmp_path, **harness.config())
        harness.script(
            "a hoodie please",
            Answer("check_product", 0.9, {"product": "hoodie"}, others=[("greet", 0.05)]),
        )
        out = await run(component, local("a hoodie please", language="en"))
        assert harness.received() == [("a hoodie please", "en", "en-app")]
        assert [r["name"] for r in out.get("intent_ranking")] == ["check_product", "greet"]
    finally:
        await harness.fake.close()


async def test_clu_list_entities_take_their_canonical_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = CLUHarness()
    await harness.start(monkeypatch)
    try:
        component = build(CLUIntentClassifier, tmp_path, **harness.config())
        harness.script(
            "una camiseta", Answer("check_product", 0.9, {"product": ("t-shirt", "camiseta")})
        )
        out = await run(component, local("una camiseta"))
        [product] = [e for e in out.get("entities") if e["entity"] == "product"]
        assert (product["value"], product["start"], product["end"]) == ("t-shirt", 4, 12)
    finally:
        await harness.fake.close()


def test_secrets_in_config_yml_are_refused(tmp_path: Path) -> None:
    from rasa.shared.exceptions import InvalidConfigException

    with pytest.raises(InvalidConfigException, match="token must not be in config.yml"):
        build(WitIntentClassifier, tmp_path, token="abc")


# ---------------------------------------------------------------- habla validate's check

DOMAIN = {"version": "3.1", "intents": ["greet", {"affirm": {"use_entities": []}}, "order_status"]}


def test_check_reports_unknown_intents_and_missing_credentials(tmp_path: Path) -> None:
    config: dict[str, Any] = {
        "pipeline": [
            {"name": "WhitespaceTokenizer"},
            {
                "name": "nlu.remote.wit.WitIntentClassifier",
                "intent_map": {"order.cancel": "order_cancel", "yes": "affirm"},
                "apps": {"es": "WIT_ACCESS_TOKEN_ES"},
            },
            {"name": "nlu.remote.clu.CLUIntentClassifier", "key": "written-in-the-file"},
            {"name": "nlu.remote.dialogflow.DialogflowIntentClassifier", "threshold": 2},
        ]
    }
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "domain.yml").write_text(yaml.safe_dump(DOMAIN))
    env = {"WIT_ACCESS_TOKEN": "x", "AZURE_LANGUAGE_ENDPOINT": "https://x"}
    problems = check_remote_nlu(tmp_path / "config.yml", tmp_path / "domain.yml", env=env)
    assert problems == [
        "config.yml pipeline[1] WitIntentClassifier: the environment variable "
        "WIT_ACCESS_TOKEN_ES (es) is not set",
        "config.yml pipeline[1] WitIntentClassifier: intent_map maps 'order.cancel' to "
        "'order_cancel', an intent the domain does not know",
        "config.yml pipeline[2] CLUIntentClassifier: 'key' is a secret; name its "
        "environment variable",
        "config.yml pipeline[2] CLUIntentClassifier: the environment variable "
        "AZURE_LANGUAGE_KEY (key_env) is not set",
        "config.yml pipeline[3] DialogflowIntentClassifier: threshold must be a number in [0, 1]",
    ]
    config["pipeline"] = config["pipeline"][:2]
    config["pipeline"][1]["intent_map"] = {"yes": "affirm"}
    env["WIT_ACCESS_TOKEN_ES"] = "y"
    assert check_remote_nlu(config, DOMAIN, env=env) == []


# ---------------------------------------------------------------- Rasa's recipe and engine


@pytest.mark.parametrize(
    "component",
    [
        "nlu.remote.dialogflow.DialogflowIntentClassifier",
        "nlu.remote.wit.WitIntentClassifier",
        "nlu.remote.clu.CLUIntentClassifier",
    ],
)
def test_rasas_recipe_takes_the_component_after_diet(component: str) -> None:
    """The graph Rasa would train and run, validated as ``rasa train`` does, with the
    component between DIETClassifier and FallbackClassifier."""
    import rasa.engine.validation
    from rasa.engine.recipes.recipe import Recipe
    from rasa.shared.data import TrainingType

    config = yaml.safe_load(
        f"""
recipe: default.v1
language: en
assistant_id: test
pipeline:
  - name: WhitespaceTokenizer
  - name: CountVectorsFeaturizer
  - name: DIETClassifier
    epochs: 1
  - name: {component}
    threshold: 0.8
  - name: EntitySynonymMapper
  - name: FallbackClassifier
    threshold: 0.5
policies:
  - name: RulePolicy
"""
    )
    recipe = Recipe.recipe_for_name("default.v1")
    model = recipe.graph_config_for_recipe(config, {}, training_type=TrainingType.BOTH)
    rasa.engine.validation.validate(model)
    name = component.rsplit(".", 1)[1]
    [(node_name, node)] = [
        (n, s) for n, s in model.predict_schema.nodes.items() if s.uses.__name__ == name
    ]
    assert node.fn == "process" and node.constructor_name == "load"
    assert node.needs["messages"].startswith("run_DIETClassifier")
    after = {s.needs.get("messages"): s.uses.__name__ for s in model.predict_schema.nodes.values()}
    assert after[node_name] == "EntitySynonymMapper"  # then FallbackClassifier
    assert any(s.uses.__name__ == name for s in model.train_schema.nodes.values())
    # what RasaEngine.load looks for to run the parse in a thread
    assert has_remote_nlu(SimpleNamespace(model_metadata=model))
    config["pipeline"] = [c for c in config["pipeline"] if c["name"] != component]
    local_only = recipe.graph_config_for_recipe(config, {}, training_type=TrainingType.BOTH)
    assert not has_remote_nlu(SimpleNamespace(model_metadata=local_only))


class _Processor:
    """What parse_in_thread and the parse cache use of Rasa's MessageProcessor."""

    http_interpreter = None

    def __init__(self, parse: Callable[[Any], dict[str, Any]]) -> None:
        self.parse = parse
        self.threads: list[int] = []
        self.calls: list[tuple[str, str]] = []

    def _parse_message_with_graph(self, message: Any, tracker: Any, only: bool = True) -> Any:
        self.threads.append(threading.get_ident())
        self.calls.append((message.text, message.metadata["language"]["code"]))
        return self.parse(message)

    def _update_full_retrieval_intent(self, parse_data: dict[str, Any]) -> None:
        return None

    def _check_for_unseen_features(self, parse_data: dict[str, Any]) -> None:
        return None


class _Msg:
    def __init__(self, text: str, language: str) -> None:
        self.text, self.sender_id = text, "c1"
        self.metadata = {"language": {"code": language}}


async def test_the_nlu_graph_runs_off_the_event_loop_and_failures_are_not_cached() -> None:
    outcome = {"reason": "timeout"}

    def parse(message: Any) -> dict[str, Any]:
        return {"text": message.text, "intent": {"name": "greet"}, "nlu_provider": dict(outcome)}

    p = _Processor(parse)
    install_parse_cache(p, size=8)
    parse_in_thread(p)
    loop_thread = threading.get_ident()

    await p.parse_message(_Msg("hola", "es"))  # type: ignore[attr-defined]
    assert p.threads and loop_thread not in p.threads
    await p.parse_message(_Msg("hola", "es"))  # type: ignore[attr-defined]
    assert p.calls == [("hola", "es")] * 2  # the provider failed: asked again
    outcome["reason"] = "confident"
    await p.parse_message(_Msg("hola", "es"))  # type: ignore[attr-defined]
    await p.parse_message(_Msg("hola", "es"))  # type: ignore[attr-defined]
    await p.parse_message(_Msg("hola", "pt"))  # type: ignore[attr-defined]
    assert p.calls == [("hola", "es")] * 3 + [("hola", "pt")]  # kept per language


def test_habla_validate_reports_them(tmp_path: Path) -> None:
    from habla.validate import remote_nlu_findings

    config = {
        "pipeline": [{"name": "nlu.remote.wit.WitIntentClassifier", "intent_map": {"x": "y"}}]
    }
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    findings = remote_nlu_findings(tmp_path, DOMAIN, env={})
    assert [(f.severity, f.check, f.message.split(": ", 1)[1]) for f in findings] == [
        ("warning", "nlu", "the environment variable WIT_ACCESS_TOKEN (token_env) is not set"),
        ("error", "nlu", "intent_map maps 'x' to 'y', an intent the domain does not know"),
    ]
