"""What ``habla validate`` checks about remote NLU components in ``config.yml``.

Offline: no provider is called. For each remote component of the pipeline: that its
class loads, that no secret is written in the config, that the environment variables
holding its credentials are set, and that every intent ``intent_map`` maps a
provider's intent to is one the domain knows (an intent the domain does not know is
never used at run time either: the component keeps the local result with the reason
``unknown_intent``, since the model only takes intents of the training data).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "nlu.remote."


def _read(source: Any) -> Mapping[str, Any]:
    if isinstance(source, (str, Path)):
        return yaml.safe_load(Path(source).read_text("utf-8")) or {}
    if isinstance(source, Mapping):
        return source
    as_dict = getattr(source, "as_dict", None)  # a Rasa Domain
    return as_dict() if callable(as_dict) else {}


def _domain_intents(domain: Mapping[str, Any]) -> set[str]:
    out = set()
    for item in domain.get("intents") or []:
        out |= set(item) if isinstance(item, Mapping) else {str(item)}
    return out


def check_remote_nlu(config: Any, domain: Any, env: Mapping[str, str] | None = None) -> list[str]:
    """Problems of the remote NLU components in ``config`` (a path, or config.yml
    loaded) against ``domain`` (a path, a mapping or a Rasa Domain); [] when none."""
    env = os.environ if env is None else env
    intents = _domain_intents(_read(domain))
    problems = []
    for at, item in enumerate(_read(config).get("pipeline") or []):
        name = str(item.get("name", "")) if isinstance(item, Mapping) else ""
        module, _, attr = name.rpartition(".")
        if not name.startswith(PACKAGE):
            continue
        where = f"config.yml pipeline[{at}] {attr}"
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            problems.append(f"{where}: cannot be loaded ({e})")
            continue
        from nlu.remote.base import RemoteIntentClassifier

        if not (isinstance(cls, type) and issubclass(cls, RemoteIntentClassifier)):
            continue
        settings = {**cls.get_default_config(), **item}
        from nlu.remote.base import SECRET_KEYS

        for key in sorted(SECRET_KEYS & set(item)):
            problems.append(f"{where}: '{key}' is a secret; name its environment variable")
        for key in cls.credential_envs:
            var = str(settings.get(key) or "")
            if not env.get(var):
                problems.append(f"{where}: the environment variable {var} ({key}) is not set")
        for language, var in (settings.get("apps") or {}).items():
            if not env.get(str(var)):
                problems.append(f"{where}: the environment variable {var} ({language}) is not set")
        for theirs, ours in (settings.get("intent_map") or {}).items():
            if ours not in intents:
                problems.append(
                    f"{where}: intent_map maps '{theirs}' to '{ours}', an intent the domain "
                    "does not know"
                )
        threshold = settings.get("threshold")
        if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            problems.append(f"{where}: threshold must be a number in [0, 1]")
    return problems
