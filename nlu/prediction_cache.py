"""Predictions for dialogue states already seen (``HABLA_PREDICTION_CACHE``): TED's,
and the rules that apply.

TED decides the next action from the conversation's last ``max_history`` dialogue
states (the intents, entity names, slot features, active form and previous actions
Rasa's featurizer keeps; with the user's text as a second example right after a user
message, when the model knows text features). Everything after those states is a
function of them: featurizing, building the model data, converting it to tensors and
running the graph, about half of the CPU of a turn of the example bot. Most turns of a
busy bot walk the same few paths (a greeting, the opening hours, the order form), so
the probabilities TED gave for a sequence of states are kept, per policy instance
(a new model starts empty), and given again when the same states come back.

The key is the states themselves, exactly as TED's featurizer computes them for
prediction (both examples when there are two), so the answer is the one TED would
compute; ``tests/test_history.py`` runs a 2,000-event conversation with this cache
and with Rasa's own code and requires every policy, confidence and reply to be the
same. Predictions that carry events (TED's end-to-end entities) are not kept. The
least recently used entries leave first beyond the configured count.

The RulePolicy looks for the rules that apply by testing every rule it learnt against
the states, twice per prediction (with the user's text, then with the intent): a
quarter of an engine worker's CPU on the example bot, growing with the number of
rules. What ``_find_action_from_rules`` finds is a function of those states (its own
``_prediction_states``), whether a loop is active and which, and the rule tables the
policy loaded, so it is kept per policy of the served model (:func:`serve`; a policy
in training, whose tables are still being built, never caches) under the states, the
loop and the flag. It is computed as Rasa does while ``rasa.core.policies.rule_policy``
logs at DEBUG, so its debug lines stay complete.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Dict, Optional  # noqa: UP035 (Rasa compares typing forms)

from rasa.core.featurizers.precomputation import MessageContainerForCoreFeaturization
from rasa.core.policies.policy import PolicyPrediction, SupportedData
from rasa.core.policies.rule_policy import RulePolicy
from rasa.core.policies.ted_policy import TEDPolicy
from rasa.shared.core.constants import ACTION_LISTEN_NAME
from rasa.shared.core.domain import Domain
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.shared.nlu.constants import TEXT

_original: Any = None
_original_rules: Any = None
_size = 0
CACHE_ATTR = "_habla_predictions"
RULES_ATTR = "_habla_rules"
_rules_logger = logging.getLogger(RulePolicy.__module__)


def install(size: int) -> None:
    """Keep up to ``size`` predictions per TED policy (0: Rasa's own predictions).

    Rasa's graph binds a component's method when it loads the model, so this must run
    before the load; afterwards it only switches the cache on and off."""
    global _original, _original_rules, _size
    if _original is None:
        _original = TEDPolicy.predict_action_probabilities
        _original_rules = RulePolicy._find_action_from_rules
    _size = max(size, 0)
    TEDPolicy.predict_action_probabilities = predict_action_probabilities if _size else _original
    RulePolicy._find_action_from_rules = find_action_from_rules if _size else _original_rules


def uninstall() -> None:
    install(0)


def installed() -> bool:
    return _size > 0


def predict_action_probabilities(
    self,
    tracker: DialogueStateTracker,
    domain: Domain,
    rule_only_data: Optional[Dict[str, Any]] = None,  # noqa: UP006
    precomputations: Optional[MessageContainerForCoreFeaturization] = None,
    **kwargs: Any,
) -> PolicyPrediction:
    """``TEDPolicy.predict_action_probabilities`` through the cache while it is on.
    Its parameters are annotated as Rasa's are: Rasa validates a model's graph against
    them when it trains one (in this process, after this is installed)."""
    if _size <= 0 or self.model is None or self.only_e2e:
        return _original(self, tracker, domain, rule_only_data, precomputations, **kwargs)
    return cached_prediction(self, tracker, domain, rule_only_data, precomputations, **kwargs)


def cached_prediction(
    self: TEDPolicy,
    tracker: Any,
    domain: Any,
    rule_only_data: dict[str, Any] | None,
    precomputations: Any,
    **kwargs: Any,
) -> Any:
    key = prediction_key(self, tracker, domain, rule_only_data)
    cache: OrderedDict[Any, tuple[Any, ...]] = self.__dict__.setdefault(CACHE_ATTR, OrderedDict())
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        probabilities, end_to_end, diagnostic_data = hit
        return self._prediction(
            list(probabilities),
            is_end_to_end_prediction=end_to_end,
            diagnostic_data=diagnostic_data,
        )
    prediction = _original(self, tracker, domain, rule_only_data, precomputations, **kwargs)
    if not prediction.optional_events and not prediction.events:
        cache[key] = (
            tuple(prediction.probabilities),
            prediction.is_end_to_end_prediction,
            prediction.diagnostic_data,
        )
        while len(cache) > _size:
            cache.popitem(last=False)
    return prediction


def serve(agent: Any) -> int:
    """Let the RulePolicies of ``agent``'s model keep what they find (see the module's
    docstring); how many there are."""
    served = 0
    for node in agent.processor.graph_runner._instantiated_nodes.values():
        component = getattr(node, "_component", None)
        if isinstance(component, RulePolicy):
            component.__dict__.setdefault(RULES_ATTR, OrderedDict())
            served += 1
    return served


def find_action_from_rules(
    self: RulePolicy, tracker: Any, domain: Any, use_text_for_last_user_input: bool
) -> tuple[str | None, str | None, bool]:
    """``RulePolicy._find_action_from_rules``, kept per served policy (:func:`serve`)."""
    cache: OrderedDict[Any, Any] | None = self.__dict__.get(RULES_ATTR)
    if cache is None or _size <= 0 or _rules_logger.isEnabledFor(logging.DEBUG):
        return _original_rules(self, tracker, domain, use_text_for_last_user_input)
    if use_text_for_last_user_input and tracker.latest_action_name != ACTION_LISTEN_NAME:
        return None, None, False  # (as Rasa's first check)
    states = self._prediction_states(
        tracker,
        domain,
        use_text_for_last_user_input,
        rule_only_data=self._get_rule_only_data(),
    )
    key = (use_text_for_last_user_input, tracker.active_loop_name, freeze(states))
    found = cache.get(key)
    if found is not None:
        cache.move_to_end(key)
        return found
    found = _original_rules(self, tracker, domain, use_text_for_last_user_input)
    cache[key] = found
    while len(cache) > _size:
        cache.popitem(last=False)
    return found


def prediction_key(
    policy: TEDPolicy, tracker: Any, domain: Any, rule_only_data: dict[str, Any] | None
) -> tuple[Any, ...]:
    """The states TED's ``_featurize_tracker`` featurizes, with the same arguments."""
    ml_only = policy.supported_data() == SupportedData.ML_DATA

    def states(use_text: bool) -> Any:
        [found] = policy.featurizer.prediction_states(
            [tracker],
            domain,
            use_text_for_last_user_input=use_text,
            ignore_rule_only_turns=ml_only,
            rule_only_data=rule_only_data,
            ignore_action_unlikely_intent=ml_only,
        )
        return freeze(found)

    # (a TED trained only end to end is never cached: the first example uses intents)
    with_text = tracker.latest_action_name == ACTION_LISTEN_NAME and TEXT in policy.fake_features
    return (states(False), states(True) if with_text else None)


def freeze(value: Any) -> Any:
    """A hashable copy of a state (dicts of dicts of names, tuples and floats)."""
    if isinstance(value, dict):
        return tuple(sorted((key, freeze(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(item) for item in value)
    return value
