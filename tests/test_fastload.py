"""nlu/fastload.py loads the example bot's DIET and TED with the very weights Rasa's own
load gives them, and the same predictions: each model is loaded both ways in one
process (Rasa's way is the slow one, about a minute), then the variables, every NLU
training example's parse and TED's action probabilities on the example conversations
are compared."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from nlu import fastload

PROJECT = Path(__file__).resolve().parent.parent

CONVERSATIONS = [
    ["hi", "how much is the mug", "I want to buy it", "no", "bye"],
    ["where is my order", "AB12345", "thanks"],
    ["hola", "¿cuánto cuesta la taza?", "quiero comprarla"],
    ["I am furious, nothing works", "yes"],
    ["do you ship to Portugal?", "what are your opening hours", "ok"],
]


def training_texts() -> list[str]:
    texts: list[str] = []
    for path in sorted((PROJECT / "data/nlu").glob("*.yml")):
        for block in yaml.safe_load(path.read_text())["nlu"]:
            if "intent" in block:
                texts += [line[2:] for line in block["examples"].splitlines() if line[:2] == "- "]
    return texts


def variables(model: Any) -> list[tuple[str, np.ndarray]]:
    return [(v.name, v.numpy()) for v in model.variables]


def same(a: Any, b: Any, path: str = "") -> None:
    """Numerically equal nested outputs (floats to 1e-5: the same graph, two runs)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, (np.ndarray, float, np.floating)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)
    else:
        assert a == b, path


def informative(probabilities: list[list[float]]) -> bool:
    """TED really predicted something (the comparisons are not of empty or uniform
    outputs): some prediction is well above uniform and they differ between states.
    How sure TED is depends on its training (30 epochs on 8 stories here, not seeded:
    one model's best was 0.35), so not more than that."""
    above_uniform = any(max(p) > 5 / len(p) for p in probabilities)
    return above_uniform and len({tuple(np.round(p, 4)) for p in probabilities}) > 1


def parse_summary(result: dict[str, Any]) -> list[Any]:
    ranking = [(i["name"], round(float(i["confidence"]), 4)) for i in result["intent_ranking"]]
    entities = [  # a time's value is relative to now: its span is what the model found
        (e["entity"], e["value"] if e["entity"] != "time" else "", e["start"], e["end"])
        for e in result["entities"]
    ]
    return [ranking, entities]


def components(agent: Any) -> tuple[Any, Any]:
    """The agent's DIET classifier and TED policy."""
    from rasa.core.policies.ted_policy import TEDPolicy
    from rasa.nlu.classifiers.diet_classifier import DIETClassifier

    found = [node._component for node in agent.processor.graph_runner._instantiated_nodes.values()]
    diet = next(c for c in found if isinstance(c, DIETClassifier))
    ted = next(c for c in found if isinstance(c, TEDPolicy))
    return diet, ted


@pytest.mark.asyncio
async def test_fast_load_restores_rasas_weights_and_predictions(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from rasa.core.agent import Agent
    from rasa.core.channels.channel import CollectingOutputChannel, UserMessage
    from rasa.shared.core.trackers import DialogueStateTracker
    from rasa.utils.tensorflow.models import RasaModel

    pairs: dict[str, tuple[Any, Any]] = {}  # class name -> (fast, Rasa's)

    def both(cls: Any, *args: Any, **kwargs: Any) -> Any:
        fast = fastload.fast_load(cls, *args, **kwargs)
        pairs[cls.__name__] = (fast, fastload.rasa_load(cls, *args, **kwargs))
        return fast

    fastload.install()  # so that fastload.rasa_load is Rasa's own, not `both`
    monkeypatch.setattr(RasaModel, "load", classmethod(both))
    agent = await asyncio.to_thread(Agent.load, str(model_path))
    assert set(pairs) == {"DIET", "TED"}
    assert "the fast load failed" not in caplog.text  # not Rasa's load on both sides

    for fast, slow in pairs.values():  # the same variables with the same values
        fast_vars, slow_vars = variables(fast), variables(slow)
        assert [name for name, _ in fast_vars] == [name for name, _ in slow_vars]
        for (name, x), (_, y) in zip(fast_vars, slow_vars, strict=True):
            np.testing.assert_array_equal(x, y, err_msg=name)

    diet, ted = components(agent)
    assert diet.model is pairs["DIET"][0] and ted.model is pairs["TED"][0]

    # every training example parsed by the whole pipeline with each DIET
    texts = training_texts() + [c for conv in CONVERSATIONS for c in conv]
    assert len(texts) > 300
    fast_parses = [parse_summary(await agent.parse_message(t)) for t in texts]
    trackers = []
    for i, conversation in enumerate(CONVERSATIONS):
        for text in conversation:
            await agent.handle_message(UserMessage(text, CollectingOutputChannel(), f"c{i}"))
        tracker = await agent.tracker_store.retrieve(f"c{i}")
        events = list(tracker.events)
        for end in range(2, len(events) + 1):  # every prefix of every conversation
            prefix = events[:end]
            trackers.append(DialogueStateTracker.from_events(f"c{i}", prefix, agent.domain.slots))
    assert len(trackers) > 50

    def ted_probabilities() -> list[list[float]]:
        return [ted.predict_action_probabilities(t, agent.domain).probabilities for t in trackers]

    fast_ted = ted_probabilities()
    diet.model, ted.model = pairs["DIET"][1], pairs["TED"][1]
    slow_parses = [parse_summary(await agent.parse_message(t)) for t in texts]
    slow_ted = ted_probabilities()

    assert fast_parses == slow_parses
    same(fast_ted, slow_ted)
    assert informative(fast_ted)


@pytest.mark.asyncio
async def test_a_model_that_cannot_be_built_fast_is_loaded_as_rasa_does(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """If the fast path's check fails (here: the checkpoint restores nothing), the
    model still loads, Rasa's way, with a warning."""
    from rasa.utils.tensorflow.models import RasaModel

    loaded: list[str] = []

    def rasa_load(cls: Any, *args: Any, **kwargs: Any) -> Any:
        loaded.append(cls.__name__)
        return object()

    def broken(cls: Any, model_file_name: str, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Some Python objects were not bound to checkpointed values")

    monkeypatch.setattr(fastload, "rasa_load", rasa_load)
    monkeypatch.setattr(fastload, "build", broken)
    model = fastload.fast_load(RasaModel, "weights", object(), None)
    assert loaded == ["RasaModel"] and model is not None
    assert "the fast load failed" in caplog.text


@pytest.mark.asyncio
async def test_the_cached_prediction_graph_predicts_as_the_traced_one(
    model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first load traces DIET's and TED's prediction graphs and saves them; the
    second reads them from the cache instead of tracing, and both agents parse every
    NLU training example and predict TED's probabilities on every prefix of the example
    conversations alike. A cache that cannot be read is traced again and replaced."""
    import logging

    from rasa.core.agent import Agent
    from rasa.core.channels.channel import CollectingOutputChannel, UserMessage
    from rasa.shared.core.trackers import DialogueStateTracker

    caplog.set_level(logging.INFO, logger="nlu.fastload")
    cache = tmp_path / "graphs"
    fastload.install(cache=cache)
    try:
        traced = await asyncio.to_thread(Agent.load, str(model_path))
        assert caplog.text.count(", traced, cached in") == 2
        graphs = sorted(cache.iterdir())
        assert [p.name.split("-")[0] for p in graphs] == ["DIET", "TED"]
        assert all((p / "saved_model.pb").is_file() for p in graphs)
        caplog.clear()
        with Recording(1) as warm_ups, fastload.warm_ups_in(warm_ups):
            cached = await asyncio.to_thread(Agent.load, str(model_path))
        # (leaving the block waited for the first predictions, run on the warm-up thread)
        assert warm_ups.submitted == 2
        assert caplog.text.count("variables cached in") == 2 and "traced" not in caplog.text
        # not the traced function: the SavedModel's, and no Keras layer built (only
        # the metrics' counters, which Rasa's model creates with it)
        for component in components(cached):
            assert component.model._tf_predict_step.source == "cache"
            assert not component.model.trainable_variables
        for component in components(traced):
            assert component.model._tf_predict_step.source == "traced"

        texts = training_texts() + [c for conv in CONVERSATIONS for c in conv]
        assert [parse_summary(await traced.parse_message(t)) for t in texts] == [
            parse_summary(await cached.parse_message(t)) for t in texts
        ]
        trackers = []
        for i, conversation in enumerate(CONVERSATIONS):
            for text in conversation:
                await traced.handle_message(UserMessage(text, CollectingOutputChannel(), f"c{i}"))
            events = list((await traced.tracker_store.retrieve(f"c{i}")).events)
            trackers += [
                DialogueStateTracker.from_events(f"c{i}", events[:end], traced.domain.slots)
                for end in range(2, len(events) + 1)
            ]
        (_, ted_traced), (_, ted_cached) = components(traced), components(cached)
        probabilities = [
            [ted.predict_action_probabilities(t, traced.domain).probabilities for t in trackers]
            for ted in (ted_traced, ted_cached)
        ]
        same(probabilities[0], probabilities[1])
        assert informative(probabilities[1])

        # a damaged cache: a warning, the graph traced and cached again, the same parse
        (graphs[0] / "saved_model.pb").write_bytes(b"not a graph")
        caplog.clear()
        again = await asyncio.to_thread(Agent.load, str(model_path))
        assert "DIET: the cached prediction graph" in caplog.text
        assert caplog.text.count(", traced, cached in") == 1  # DIET; TED still cached
        assert (graphs[0] / "saved_model.pb").read_bytes() != b"not a graph"
        text = "how much is the mug"
        assert parse_summary(await again.parse_message(text)) == parse_summary(
            await traced.parse_message(text)
        )
    finally:
        fastload.install(cache=None)


class Recording(ThreadPoolExecutor):
    """A thread pool that counts what it was given."""

    submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_a_cached_graph_failing_its_first_prediction_is_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On the warm-up thread, a cached graph that fails its first prediction is logged
    and removed from the cache (the next start traces it); without one, the failure
    reaches fast_load, which traces the graph at once."""

    class Broken:
        def run_inference(self, example: Any) -> None:
            raise ValueError("no kernel for this op")

    folder = tmp_path / "DIET-0123"
    folder.mkdir()
    with Recording(1) as warm_ups, fastload.warm_ups_in(warm_ups):
        fastload.first_prediction(Broken(), folder, object())
    assert warm_ups.submitted == 1
    assert not folder.exists() and "failed its first prediction" in caplog.text
    folder.mkdir()
    with pytest.raises(ValueError, match="no kernel"):
        fastload.first_prediction(Broken(), folder, object())
    assert folder.exists()  # fast_load removes it when it traces the graph again


def test_a_batch_the_signature_does_not_take_goes_through_the_tf_function() -> None:
    """FlatPredict calls the graph's concrete function directly only with a batch that
    fits its signature; anything else takes Rasa's path, the ``tf.function``, which
    rejects it as it always did."""
    import tensorflow as tf

    def predict_step(batch: list[Any]) -> dict[str, Any]:
        return {"sum": tf.reduce_sum(batch[0]) + tf.cast(tf.reduce_sum(batch[1]), tf.float32)}

    signature = [[tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None], tf.int64)]]
    function = tf.function(predict_step, input_signature=signature)
    flat = fastload.FlatPredict(function, "x")
    batch = (np.ones((3, 2), np.float32), np.arange(3, dtype=np.int64))
    assert flat.fits(batch) and float(flat(batch)["sum"].numpy()) == 9.0
    for wrong in (
        (np.ones((3, 3), np.float32), np.arange(3, dtype=np.int64)),  # a fixed size
        (np.ones((3, 2, 1), np.float32), np.arange(3, dtype=np.int64)),  # a rank
        (np.ones((3, 2), np.float32),),  # a missing input
    ):
        assert not flat.fits(wrong)
        with pytest.raises((TypeError, ValueError)):
            flat(wrong)
    # a dtype the tf.function converts (float64 to float32): what it gives, it gives
    converted = (np.ones((3, 2), np.float64), np.arange(3, dtype=np.int64))
    assert not flat.fits(converted)
    assert float(flat(converted)["sum"].numpy()) == float(function(list(converted))["sum"])
