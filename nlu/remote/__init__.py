"""Remote NLU providers (Dialogflow ES, Wit.ai, Azure CLU) as Rasa NLU components.

See nlu/remote/base.py for what they do and README "External NLU" for config.yml.
This package module imports no Rasa: the engine reads these names before Rasa loads.
"""

OUTPUT_KEY = "nlu_provider"
"""Where a component records its outcome in the parse data (``tracker.latest_message``)."""
FAILURES = frozenset({"timeout", "unavailable", "auth", "bad_response", "error"})
"""Reasons that say the provider could not answer (its result was not seen)."""
