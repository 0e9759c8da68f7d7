"""Logging for habla processes (the server, the CLI, engine workers): quiet Rasa's
import-time noise, one format."""

from __future__ import annotations

import logging
import os
import sys
import warnings

from runtime.logs import formatter


def quiet_imports() -> None:
    """Rasa's dependencies warn loudly at import; none of it is actionable by authors."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    warnings.filterwarnings("ignore", message="Slot auto-fill has been removed")
    warnings.filterwarnings("ignore", message="Deprecated API features detected")


def configure_logging(level: str, import_rasa: bool = True, fmt: str = "text") -> None:
    """One log format (``fmt``: text, or json lines; runtime/logs.py); Rasa's noise
    quieted. ``import_rasa``: import TensorFlow, Keras and Rasa's agent now (12 s
    here), recording what they warn. The server leaves them to its engine's background
    load, so it listens for webhooks in seconds."""
    quiet_imports()
    if import_rasa:
        load_rasa()

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
    noisy = ("rasa", "tensorflow", "absl", "matplotlib", "urllib3", "twilio.http_client")
    quiet = max(logging.WARNING, logging.getLogger().level)
    for name in noisy:
        logging.getLogger(name).setLevel(quiet)
    from rasa.utils.log_utils import configure_structlog

    configure_structlog(quiet)  # Rasa's structlog events otherwise print at DEBUG


def load_rasa() -> None:
    """Import Rasa's agent (TensorFlow, Keras, Sanic, matplotlib...), recording (not
    printing) what the imports warn and dropping the warning filters they install."""
    skip_jax()
    with warnings.catch_warnings(record=True):
        import rasa.api
        import rasa.core.agent  # noqa: F401


def skip_jax() -> None:
    """TensorFlow 2.12 requires JAX, and its ``tf.lite`` module imports it (1.4 s of every
    start) for a converter Rasa never uses, inside ``try: ... except ImportError``.
    Before TensorFlow is imported, JAX is marked absent in this process so that import
    fails at once (nothing else in TensorFlow, Keras or Rasa imports JAX)."""
    if "tensorflow" not in sys.modules and "jax" not in sys.modules:
        sys.modules["jax"] = None  # type: ignore[assignment]
