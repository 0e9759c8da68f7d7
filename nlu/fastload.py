"""Load Rasa's TensorFlow models (DIET, TED) in seconds instead of most of a minute.

Rasa 3.6 rebuilds a saved model by *training it for one step* in graph mode
(``RasaModel.load``: ``compile``, ``fit`` on one example, ``load_weights``, then one
prediction to trace the prediction graph). Tracing the training step (forward pass,
two gradient tapes, the optimizer) is what took the time: on a 2-core machine the
example bot's DIET took 47 s and its TED 24 s to load, the same graph building that
makes the first training epoch slow.

Only the model's variables are needed to predict, and one eager forward pass of the
training loss creates every one of them (the same layers the training step builds, so
the same checkpoint paths). Then the trained weights are restored, TensorFlow is asked
to confirm that *every* variable of the model received its saved value
(``assert_existing_objects_matched``: the optimizer's slots, which only training
needs, are left out on purpose), and the prediction graph is traced as Rasa does.
Predictions are the same values (``tests/test_fastload.py`` compares both loads on
the example bot). Anything unexpected (an assertion, a model class that builds
differently, fine-tuning, which needs the optimizer) falls back to Rasa's own load.

Not building the prediction cache (``prepare_for_predict``) before the weights are in
place matters: doing the warm-up prediction first would cache label embeddings
computed from random weights.

**The traced prediction graph is cached on disk** (``install(cache=...)``,
``HABLA_GRAPH_CACHE``): tracing ``predict_step`` took 4 s for DIET and 4 s for TED.
The first load of a model saves the traced function as a TensorFlow SavedModel
(with the variables it reads and the label embeddings it captured), keyed by the
model class, its config, the checkpoint's bytes and the TensorFlow and Rasa versions.
A later load of the same model reads that graph and **builds no Keras variables at
all** (:func:`from_cached_graph`): predicting only runs the graph, which reads its own
copy of the weights. A cached graph that cannot be read is traced again and replaces
it. ``tests/test_fastload.py`` compares the cached graph's parses and TED
probabilities with the traced one's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_original: Any = None
_cache: Path | None = None
_warm_ups: Executor | None = None

KEEP_GRAPHS = 4
"""Cached graphs kept per model class (the most recently used): older models' go."""


def install(cache: Path | None = None) -> None:
    """Replace ``RasaModel.load`` (idempotent); :func:`uninstall` restores Rasa's.
    ``cache``: the folder of traced prediction graphs (None: trace at every load)."""
    global _original, _cache
    _cache = cache
    if _original is not None:
        return
    from rasa.utils.tensorflow.models import RasaModel

    _original = RasaModel.load.__func__
    RasaModel.load = classmethod(fast_load)


def uninstall() -> None:
    global _original, _cache
    _cache = None
    if _original is None:
        return
    from rasa.utils.tensorflow.models import RasaModel

    RasaModel.load = classmethod(_original)
    _original = None


@contextlib.contextmanager
def warm_ups_in(executor: Executor) -> Iterator[None]:
    """Models loaded from the cache in this block run their first prediction on
    ``executor`` instead of in the load (see :func:`first_prediction`)."""
    global _warm_ups
    _warm_ups = executor
    try:
        yield
    finally:
        _warm_ups = None


def rasa_load(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """Rasa's own ``RasaModel.load`` (whether or not this module is installed)."""
    from rasa.utils.tensorflow.models import RasaModel

    original = _original or RasaModel.load.__func__
    return original(cls, *args, **kwargs)


def fast_load(
    cls: Any,
    model_file_name: str,
    model_data_example: Any,
    predict_data_example: Any = None,
    finetune_mode: bool = False,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """``RasaModel.load``'s signature and result, without the training step."""
    if finetune_mode:  # further training needs the optimizer's state: Rasa's way
        return rasa_load(
            cls, model_file_name, model_data_example, predict_data_example, True, *args, **kwargs
        )
    started = time.perf_counter()
    folder = cached_graph_folder(cls, model_file_name, kwargs)
    if folder is not None and folder.is_dir():
        try:
            model = from_cached_graph(cls, folder, predict_data_example, *args, **kwargs)
        except Exception:
            logger.warning(
                "%s: the cached prediction graph in %s could not be used; tracing it",
                cls.__name__,
                folder,
                exc_info=True,
            )
            shutil.rmtree(folder, ignore_errors=True)  # replaced by the graph traced below
        else:
            logger.info(
                "%s loaded in %.1f s (prediction graph and its variables cached in %s)",
                cls.__name__,
                time.perf_counter() - started,
                folder,
            )
            return model
    try:
        model = build(cls, model_file_name, model_data_example, *args, **kwargs)
    except Exception:
        logger.warning(
            "%s: the fast load failed; loading it as Rasa does", cls.__name__, exc_info=True
        )
        return rasa_load(
            cls, model_file_name, model_data_example, predict_data_example, False, *args, **kwargs
        )
    built = time.perf_counter()
    graph = "not needed"
    if predict_data_example:
        graph = prediction_graph(model, predict_data_example, folder)
    logger.info(
        "%s loaded in %.1f s (variables and weights %.1f s, prediction graph %.1f s, %s)",
        cls.__name__,
        time.perf_counter() - started,
        built - started,
        time.perf_counter() - built,
        graph,
    )
    return model


def cached_graph_folder(cls: Any, model_file_name: str, kwargs: dict) -> Path | None:
    """Where this model's prediction graph is (or will be) cached; None without a
    cache, for a model that predicts eagerly (no graph), or if the checkpoint cannot
    be read (then the load below says why)."""
    from rasa.utils.tensorflow.constants import RUN_EAGERLY

    if _cache is None or kwargs.get("config", {}).get(RUN_EAGERLY):
        return None
    try:
        return _cache / f"{cls.__name__}-{graph_key(cls, model_file_name, kwargs)}"
    except OSError:
        return None


def from_cached_graph(
    cls: Any, folder: Path, predict_data_example: Any, *args: Any, **kwargs: Any
) -> Any:
    """The model with its prediction graph from the cache, **without building its Keras
    variables**: predictions only run that graph, which reads the variables saved
    beside it (the trained weights: the cache key holds the checkpoint's bytes, and
    the graph was saved from a model whose every variable was checked against that
    checkpoint) and the label embeddings it captured. Building the variables (one eager
    pass of the loss) and restoring the weights took 0.8 s of a start and a second
    copy of the weights in memory. ``prepared_for_prediction``: Rasa's
    ``prepare_for_predict`` computes the label embeddings from the variables, which
    are not there; the graph has them."""
    model = compiled(cls, *args, **kwargs)
    use_cached_graph(model, folder)
    model.prepared_for_prediction = True
    if predict_data_example:
        first_prediction(model, folder, predict_data_example)
    os.utime(folder)  # recently used: kept when older models' graphs go
    return model


def first_prediction(model: Any, folder: Path, predict_data_example: Any) -> None:
    """Run the cached graph once, as Rasa's load does: TensorFlow prepares a graph on
    its first call (0.2-0.3 s here, in C++, without the GIL). During an engine's load
    (:func:`warm_ups_in`) that runs on the engine's warm-up thread while the load goes
    on; a graph that fails there is removed from the cache (traced at the next start).
    Otherwise it runs now, and a failure makes :func:`fast_load` trace the graph."""
    executor = _warm_ups
    if executor is not None:

        def run() -> None:
            try:
                model.run_inference(predict_data_example)
            except Exception:
                logger.exception(
                    "%s: the cached prediction graph in %s failed its first prediction; "
                    "removed from the cache",
                    type(model).__name__,
                    folder,
                )
                shutil.rmtree(folder, ignore_errors=True)

        with contextlib.suppress(RuntimeError):  # (an executor already shut down: now)
            executor.submit(run)
            return
    model.run_inference(predict_data_example)


def prediction_graph(model: Any, predict_data_example: Any, folder: Path | None) -> str:
    """Trace ``model``'s prediction graph as Rasa's load does and save it in ``folder``
    (the cache; None: not cached); says which."""
    model.run_inference(predict_data_example)  # traces the prediction graph
    traced = model._tf_predict_step
    if traced is None:  # run eagerly: no graph
        return "eager"
    said = "traced"
    if folder is not None:
        try:
            save_graph(model, folder)
            said = f"traced, cached in {folder}"
        except Exception as e:  # a read-only folder, a full disk: only the next start pays
            logger.warning(
                "%s: the prediction graph was not cached in %s: %s",
                type(model).__name__,
                folder,
                e,
            )
    model._tf_predict_step = FlatPredict(traced, "traced")
    return said


def graph_key(cls: Any, model_file_name: str, kwargs: dict) -> str:
    """What the traced graph depends on: the class, its config (some options act only
    at prediction), the trained weights (the checkpoint's files), TF's and Rasa's
    versions."""
    import rasa
    import tensorflow as tf

    digest = hashlib.sha256()
    config = json.dumps(kwargs.get("config", {}), sort_keys=True, default=str)
    for part in (cls.__module__, cls.__qualname__, config, tf.__version__, rasa.__version__):
        digest.update(part.encode() + b"\0")
    checkpoint = Path(model_file_name)
    files = sorted(checkpoint.parent.glob(checkpoint.name + ".*"))
    if not files:
        raise FileNotFoundError(f"no checkpoint files for {model_file_name}")
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:20]


class FlatPredict:
    """``RasaModel._tf_predict_step``: the prediction graph's one concrete function,
    called with the batch's arrays as tensors. Rasa calls its ``tf.function``, whose
    argument handling (binding, a signature lookup, a type check per input) took more
    CPU than TED's whole graph on one turn (3.5 ms a call against 2.3 ms, measured on
    the example bot). The batch is checked against the signature here instead (dtype,
    rank, fixed sizes); one that does not fit (it never happens with Rasa's featurizers)
    goes through the ``tf.function``, Rasa's path, which rejects it as Rasa would.
    ``source``: "cache" (a SavedModel read from the cache) or "traced"."""

    def __init__(self, function: Any, source: str) -> None:
        import tensorflow as tf

        self.function, self.source = function, source
        self.concrete = (
            function.concrete_functions[0]  # a SavedModel's (one: it had a signature)
            if hasattr(function, "concrete_functions")
            else function.get_concrete_function()
        )
        args, kwargs = self.concrete.structured_input_signature
        [specs] = args  # predict_step(batch_in): one list of tensors
        assert not kwargs and isinstance(specs, (list, tuple)), "an unexpected signature"
        self.specs = [(s.dtype.as_numpy_dtype, tuple(s.shape.as_list())) for s in specs]
        self._tensor = tf.convert_to_tensor

    def fits(self, batch_in: Any) -> bool:
        if len(batch_in) != len(self.specs):
            return False
        for array, (dtype, shape) in zip(batch_in, self.specs, strict=True):
            if getattr(array, "dtype", None) != dtype or len(array.shape) != len(shape):
                return False
            if any(
                want is not None and want != got
                for want, got in zip(shape, array.shape, strict=True)
            ):
                return False
        return True

    def __call__(self, batch_in: Any) -> Any:
        if not self.fits(batch_in):
            logger.warning("an input the prediction graph's signature does not take")
            return self.function(list(batch_in))
        tensors = [self._tensor(array) for array in batch_in]
        return self.concrete._call_flat(tensors, self.concrete.captured_inputs)


def use_cached_graph(model: Any, folder: Path) -> None:
    import tensorflow as tf

    model._tf_predict_step = FlatPredict(tf.saved_model.load(str(folder)).predict, "cache")


def save_graph(model: Any, folder: Path) -> None:
    """The traced prediction function and the variables it reads, as a SavedModel,
    written beside ``folder`` and renamed into place (two engine workers loading the
    same model race harmlessly); then the least recently used graphs of the class
    beyond :data:`KEEP_GRAPHS` are removed."""
    import tensorflow as tf

    folder.parent.mkdir(parents=True, exist_ok=True)
    module = tf.Module()
    module.variables_read = list(model.variables)  # tracked: the function captures them
    module.predict = model._tf_predict_step
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder.parent))
    try:
        tf.saved_model.save(module, str(staging))
        os.rename(staging, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    prefix = folder.name.split("-", 1)[0] + "-"
    graphs = [p for p in folder.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    graphs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in graphs[KEEP_GRAPHS:]:
        shutil.rmtree(old, ignore_errors=True)


def build(
    cls: Any, model_file_name: str, model_data_example: Any, *args: Any, **kwargs: Any
) -> Any:
    """The model with its variables created by one eager loss pass and its weights
    restored, every variable checked; nothing traced yet."""
    from rasa.utils.tensorflow.data_generator import RasaBatchDataGenerator

    model = compiled(cls, *args, **kwargs)
    batch_in = RasaBatchDataGenerator(model_data_example, batch_size=1)[0][0]
    model._training = True  # the training branch builds the loss layers' variables too
    try:
        model.batch_loss(batch_in)
    finally:
        model._training = None
    status = model.load_weights(model_file_name)
    status.assert_existing_objects_matched()  # every variable of the model restored
    status.expect_partial()  # the optimizer's slots in the checkpoint are not used
    return model


def compiled(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """The model object, compiled as Rasa compiles it (``run_eagerly`` decides how
    predictions run); no variable exists yet, and the optimizer's never will, as
    nothing is trained."""
    import tensorflow as tf
    from rasa.utils.tensorflow.constants import LEARNING_RATE, RUN_EAGERLY

    config = kwargs.get("config", {})
    model = cls(*args, **kwargs)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(config.get(LEARNING_RATE, 0.001)),
        run_eagerly=config.get(RUN_EAGERLY),
    )
    return model
