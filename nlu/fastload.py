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
"""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

_original: Any = None


def install() -> None:
    """Replace ``RasaModel.load`` (idempotent); :func:`uninstall` restores Rasa's."""
    global _original
    if _original is not None:
        return
    from rasa.utils.tensorflow.models import RasaModel

    _original = RasaModel.load.__func__
    RasaModel.load = classmethod(fast_load)


def uninstall() -> None:
    global _original
    if _original is None:
        return
    from rasa.utils.tensorflow.models import RasaModel

    RasaModel.load = classmethod(_original)
    _original = None


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
    if predict_data_example:  # traces the prediction graph, as Rasa's load does
        model.run_inference(predict_data_example)
    logger.info(
        "%s loaded in %.1f s (variables and weights %.1f s, prediction graph %.1f s)",
        cls.__name__,
        time.perf_counter() - started,
        built - started,
        time.perf_counter() - built,
    )
    return model


def build(
    cls: Any, model_file_name: str, model_data_example: Any, *args: Any, **kwargs: Any
) -> Any:
    """The model with its variables created by one eager loss pass and its weights
    restored, every variable checked; nothing traced yet."""
    import tensorflow as tf
    from rasa.utils.tensorflow.constants import LEARNING_RATE, RUN_EAGERLY
    from rasa.utils.tensorflow.data_generator import RasaBatchDataGenerator

    config = kwargs.get("config", {})
    model = cls(*args, **kwargs)
    # compiled as Rasa compiles it (run_eagerly decides how predictions run later);
    # the optimizer's variables are never created, as nothing is trained
    model.compile(
        optimizer=tf.keras.optimizers.Adam(config.get(LEARNING_RATE, 0.001)),
        run_eagerly=config.get(RUN_EAGERLY),
    )
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
