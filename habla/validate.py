"""``habla validate``: Rasa's validator and habla's own checks, one report.

Rasa (``rasa.validator.Validator``): the domain, intents and utterances against the
training data, stories and rules, forms and slot mappings. habla: settings, every
response in every configured language (an authored variant, a reviewed translation in
``translations/<lang>.yml`` or a configured translator), button payloads naming real
intents and entities, the catalog, and machine translations still unreviewed or stale.

Findings have a severity: ``error`` (``habla validate`` exits 1), ``warning`` and
``info`` (what Rasa warns about that habla explains: an intent the runtime triggers,
an utterance an action sends).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from commerce.catalog import read_catalog
from i18n import reviewed as reviewed_translations
from runtime import providers
from runtime.settings import SettingsError, load_settings

SEVERITIES = ("error", "warning", "info")
# ISO 4217 codes in use (2024), for catalog currencies
ISO_4217 = frozenset(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD
    BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR
    FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD
    JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT
    MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG
    QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB
    TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XOF XPF YER
    ZAR ZMW ZWL""".split()
)
RECURRING = ("month", "year")
_PAYLOAD = re.compile(r"^/(?P<intent>[^{@\s]+)(?P<entities>\{.*\})?(?:@[\d.]+)?$", re.S)
_STRIPE_PRICE = re.compile(r"^price_[A-Za-z0-9]+$")
_PAYPAL_PLAN = re.compile(r"^P-[A-Z0-9]+$")


@dataclass(frozen=True)
class Finding:
    severity: str  # error | warning | info
    check: str  # rasa | settings | languages | buttons | catalog | translations | nlu
    message: str
    where: str = ""


@dataclass
class Report:
    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> str:
        counts = {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}
        body = {"ok": self.ok, "counts": counts, "findings": [asdict(f) for f in self.findings]}
        return json.dumps(body, indent=2, ensure_ascii=False)

    def text(self, verbose: bool = False) -> str:
        lines = []
        for severity in SEVERITIES:
            found = [f for f in self.findings if f.severity == severity]
            if not found:
                continue
            if severity == "info" and not verbose:
                lines += [f"INFOS ({len(found)}): --verbose lists them", ""]
                continue
            lines.append(f"{severity.upper()}S ({len(found)})")
            for f in found:
                where = f" [{f.where}]" if f.where else ""
                lines.append(f"  {f.check:<12} {f.message}{where}")
            lines.append("")
        counts = ", ".join(
            f"{sum(f.severity == s for f in self.findings)} {s}s" for s in SEVERITIES
        )
        verdict = "valid" if self.ok else "NOT valid"
        lines.append(f"habla validate: {verdict} ({counts})")
        return "\n".join(lines)


def validate(bot_dir: Path, env: Mapping[str, str] | None = None) -> Report:
    """Every check on the bot in ``bot_dir`` (blocking; loads Rasa: seconds)."""
    findings: list[Finding] = []
    settings = None
    try:
        settings = load_settings(env=env)
    except SettingsError as e:
        findings += [Finding("error", "settings", p) for p in e.problems]
    domain, domain_file = _read_domain(bot_dir, findings)
    findings += rasa_findings(bot_dir, _code_names(bot_dir))
    if domain is not None:
        responses = domain.get("responses") or {}
        raw = (os.environ if env is None else env).get("HABLA_LANGUAGES") or "en,es,pt"
        languages = (
            settings.languages if settings else [c.strip() for c in raw.split(",") if c.strip()]
        )
        translator = bool(settings and settings.i18n.translator)
        files = _translation_files(bot_dir, findings)
        findings += language_findings(responses, languages, translator, files)
        findings += button_findings(domain, domain_file)
        findings += remote_nlu_findings(bot_dir, domain, env)
        findings += translation_findings(responses, languages[0], files)
    catalog = _catalog_path(bot_dir, env)
    if catalog.is_file():
        findings += catalog_findings(catalog)
    return Report(findings)


def remote_nlu_findings(
    bot_dir: Path, domain: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> list[Finding]:
    """The remote NLU components in config.yml (nlu/remote/check.py): a credential
    variable not set is a warning (the local model answers meanwhile), the rest errors."""
    from nlu.remote.check import check_remote_nlu

    config = bot_dir / "config.yml"
    if not config.is_file():
        return []
    return [
        Finding("warning" if p.endswith("is not set") else "error", "nlu", p, "config.yml")
        for p in check_remote_nlu(config, domain, env)
    ]


def _catalog_path(bot_dir: Path, env: Mapping[str, str] | None) -> Path:
    name = Path((env or {}).get("HABLA_CATALOG") or "catalog.yml").expanduser()
    return name if name.is_absolute() else bot_dir / name


def _read_domain(bot_dir: Path, findings: list[Finding]) -> tuple[dict[str, Any] | None, str]:
    """The domain as YAML (several files in ``domain/`` merged shallowly)."""
    folder = bot_dir / "domain"
    files = sorted(folder.rglob("*.yml")) if folder.is_dir() else [bot_dir / "domain.yml"]
    merged: dict[str, Any] = {}
    for path in files:
        try:
            part = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            findings.append(Finding("error", "rasa", f"cannot read the domain: {e}", str(path)))
            return None, ""
        for key, value in part.items():
            if isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            elif isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            else:
                merged[key] = value
    return merged, str(files[0].relative_to(bot_dir)) if files else ""


def _code_names(bot_dir: Path) -> str:
    """The source of the bot's actions and of habla's packages that trigger intents or
    send responses by name (to explain Rasa's "not used" warnings)."""
    roots = [bot_dir / "actions", *(Path(__file__).parent.parent / p for p in _TRIGGERING)]
    texts = []
    for root in roots:
        if root.is_dir():
            texts += [p.read_text(encoding="utf-8", errors="replace") for p in root.rglob("*.py")]
    return "\n".join(texts)


_TRIGGERING = ("voice", "commerce", "habla", "channels", "runtime", "i18n")
# what Rasa only warns about but breaks the bot: a story naming what the domain lacks
_SERIOUS = re.compile(
    r"is used in the stories, but is not a valid|is not listed in (?:your|the) domain|"
    r"not listed in your domain|is not defined in the domain|not in the domain"
)
_INTENT_UNUSED = re.compile(r"The intent '(\w+)' is listed in the domain file, but is not found")
_UTTER_UNUSED = re.compile(r"The utterance '(\w+)' is not used in any story or rule")


def rasa_findings(bot_dir: Path, code: str = "") -> list[Finding]:
    """Rasa's validator: each check's messages are errors when the check fails, else
    warnings (or info when habla's or the actions' code names the intent or response)."""
    from nlu.logs import load_rasa

    load_rasa()
    from rasa.shared.importers.importer import TrainingDataImporter
    from rasa.validator import Validator

    domain = bot_dir / "domain"
    findings: list[Finding] = []
    with _captured() as messages:
        try:
            importer = TrainingDataImporter.load_from_config(
                str(bot_dir / "config.yml"),
                str(domain if domain.is_dir() else bot_dir / "domain.yml"),
                [str(bot_dir / "data")],
            )
            validator = Validator.from_importer(importer)
        except Exception as e:
            return [Finding("error", "rasa", f"cannot load the bot: {type(e).__name__}: {e}")]
    del messages[:]  # (warnings while loading: deprecations, repeated by the checks)
    checks: list[tuple[str, Callable[[], bool]]] = [
        ("domain", validator.verify_domain_validity),
        ("actions", validator.verify_actions_in_stories_rules),
        ("forms", validator.verify_forms_in_stories_rules),
        ("form slots", validator.verify_form_slots),
        ("slot mappings", validator.verify_slot_mappings),
        ("nlu", lambda: validator.verify_nlu(True)),
        ("stories", lambda: validator.verify_story_structure(True)),
    ]
    for name, check in checks:
        with _captured() as messages:
            try:
                ok = check()
            except Exception as e:
                ok, messages[:] = False, [f"{type(e).__name__}: {e}"]
        for message in dict.fromkeys(messages):
            severity = "warning" if ok and not _SERIOUS.search(message) else "error"
            m = _INTENT_UNUSED.search(message) or _UTTER_UNUSED.search(message)
            if ok and m and _named_in(m.group(1), code):
                severity = "info"
            findings.append(Finding(severity, "rasa", message, name))
    return findings


def _named_in(name: str, code: str) -> bool:
    """``name`` in the code, quoted, as a ``/trigger``, or built (``f"utter_order_{x}"``)."""
    if re.search(rf"['\"/]{re.escape(name)}\b", code):
        return True
    prefixes = [name[: i + 1] for i, c in enumerate(name) if c == "_"]
    return any(re.search(rf"['\"]{re.escape(p)}\{{", code) for p in prefixes)


class _captured:
    """Warnings and log records Rasa's validator raises, as a list of messages."""

    def __enter__(self) -> list[str]:
        self.messages: list[str] = []
        self._stderr = contextlib.redirect_stderr(io.StringIO())  # (tqdm's progress bars)
        self._stderr.__enter__()
        self._warnings = warnings.catch_warnings(record=True)
        self.recorded = self._warnings.__enter__()
        warnings.simplefilter("always")
        self.handler = _ListHandler(self.messages)
        self.logger = logging.getLogger("rasa")
        self.logger.addHandler(self.handler)
        self.propagate, self.logger.propagate = self.logger.propagate, False
        return self.messages

    def __exit__(self, *exc: Any) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.propagate = self.propagate
        self._warnings.__exit__(*exc)
        self._stderr.__exit__(None, None, None)
        for w in self.recorded:
            if not issubclass(w.category, DeprecationWarning | FutureWarning):
                self.messages.append(str(w.message))


class _ListHandler(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _translation_files(bot_dir: Path, findings: list[Finding]) -> dict[str, dict[str, Any]]:
    try:
        return reviewed_translations.load_all(bot_dir)
    except (OSError, ValueError, yaml.YAMLError) as e:
        findings.append(Finding("error", "translations", str(e)))
        return {}


def language_findings(
    responses: Mapping[str, list[dict[str, Any]]],
    languages: list[str],
    translator: bool,
    files: Mapping[str, Mapping[str, Any]],
) -> list[Finding]:
    """Every response reaches every configured language: an unconditioned variant (the
    default language), a variant conditioned on the language, a translation in
    ``translations/<lang>.yml`` or, failing those, the configured translator."""
    findings = []
    default = languages[0]
    for name, variants in responses.items():
        texts = [v for v in variants if not v.get("channel")]
        if not any(not reviewed_translations.variant_languages(v) for v in texts):
            findings.append(
                Finding(
                    "error",
                    "languages",
                    f"{name} has no variant without a language condition: replies in "
                    f"'{default}' (the default) and unmatched languages would be empty",
                    name,
                )
            )
        authored = {lang for v in variants for lang in reviewed_translations.variant_languages(v)}
        for lang in languages[1:]:
            if lang in authored:
                continue
            translated = name in ((files.get(lang) or {}).get("responses") or {})
            if translated:
                continue
            if translator:
                findings.append(
                    Finding(
                        "info",
                        "languages",
                        f"{name} has no '{lang}' variant: machine-translated at run time",
                        name,
                    )
                )
            else:
                findings.append(
                    Finding(
                        "error",
                        "languages",
                        f"{name} has no '{lang}' variant, no translation in "
                        f"translations/{lang}.yml and no translator (HABLA_TRANSLATOR): "
                        f"'{lang}' users would get '{default}'",
                        name,
                    )
                )
    return findings


def button_findings(domain: Mapping[str, Any], where: str = "domain.yml") -> list[Finding]:
    """Button payloads ``/intent{"entity": "value"}`` name the domain's intents and
    entities (a payload without ``/`` is sent as text and parsed by NLU: fine)."""
    intents = {
        next(iter(i)) if isinstance(i, dict) else str(i) for i in domain.get("intents") or []
    }
    intents |= {"restart", "back", "out_of_scope", "session_start", "nlu_fallback"}
    entities = {
        next(iter(e)) if isinstance(e, dict) else str(e) for e in domain.get("entities") or []
    }
    findings = []
    for name, variants in (domain.get("responses") or {}).items():
        for variant in variants or []:
            for button in variant.get("buttons") or []:
                payload = str(button.get("payload") or "")
                title = str(button.get("title") or "")
                if not title:
                    findings.append(Finding("error", "buttons", f"{name}: a button has no title"))
                if not payload.startswith("/"):
                    continue
                m = _PAYLOAD.match(payload)
                if m is None:
                    findings.append(
                        Finding("error", "buttons", f"{name}: malformed payload {payload!r}")
                    )
                    continue
                if m.group("intent") not in intents:
                    findings.append(
                        Finding(
                            "error",
                            "buttons",
                            f"{name}: button {title!r} triggers unknown intent "
                            f"'{m.group('intent')}'",
                            where,
                        )
                    )
                if m.group("entities"):
                    try:
                        values = json.loads(m.group("entities"))
                    except ValueError:
                        findings.append(
                            Finding("error", "buttons", f"{name}: payload {payload!r}: bad JSON")
                        )
                        continue
                    for entity in values if isinstance(values, dict) else {}:
                        if entity not in entities:
                            findings.append(
                                Finding(
                                    "error",
                                    "buttons",
                                    f"{name}: button {title!r} sets unknown entity '{entity}'",
                                    where,
                                )
                            )
    return findings


def catalog_findings(path: Path) -> list[Finding]:
    """The catalog parses; SKUs unique; prices positive; the currency ISO 4217;
    ``recurring`` month or year; Stripe prices and PayPal plans well-formed."""
    where = path.name
    try:
        catalog = read_catalog(path)
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
        return [Finding("error", "catalog", f"cannot read the catalog: {e!r}", where)]
    findings = []
    if catalog.currency not in ISO_4217:
        findings.append(
            Finding("error", "catalog", f"currency {catalog.currency!r} is not ISO 4217", where)
        )
    seen: dict[str, str] = {}
    payments = set(providers.PAYMENTS.names)
    for p in catalog.products:
        label = f"product {p.name!r}"
        if not p.sku:
            findings.append(Finding("warning", "catalog", f"{label} has no sku", where))
        elif p.sku in seen:
            findings.append(
                Finding("error", "catalog", f"sku {p.sku} used by {seen[p.sku]!r} and {p.name!r}")
            )
        seen.setdefault(p.sku, p.name)
        if not p.price > 0:
            findings.append(Finding("error", "catalog", f"{label}: price {p.price} <= 0", where))
        if p.recurring and p.recurring not in RECURRING:
            findings.append(
                Finding(
                    "error",
                    "catalog",
                    f"{label}: recurring {p.recurring!r} (expected month or year)",
                    where,
                )
            )
        if p.stripe_price and not _STRIPE_PRICE.match(p.stripe_price):
            findings.append(
                Finding(
                    "error",
                    "catalog",
                    f"{label}: stripe_price {p.stripe_price!r} is not a Price id (price_...)",
                    where,
                )
            )
        if p.paypal_plan:
            if not _PAYPAL_PLAN.match(p.paypal_plan):
                findings.append(
                    Finding(
                        "error",
                        "catalog",
                        f"{label}: paypal_plan {p.paypal_plan!r} is not a plan id (P-...)",
                        where,
                    )
                )
            if not p.recurring:
                findings.append(
                    Finding(
                        "warning",
                        "catalog",
                        f"{label}: paypal_plan is only used for recurring products",
                        where,
                    )
                )
        if p.payments and p.payments not in payments and ":" not in p.payments:
            findings.append(
                Finding(
                    "error",
                    "catalog",
                    f"{label}: payments {p.payments!r} is not a payment provider "
                    f"({', '.join(sorted(payments))})",
                    where,
                )
            )
    return findings


def translation_findings(
    responses: Mapping[str, list[dict[str, Any]]],
    default: str,
    files: Mapping[str, Mapping[str, Any]],
) -> list[Finding]:
    """Machine translations not reviewed yet, and translations whose source changed."""
    findings = []
    for language, document in files.items():
        source = str(document.get("source") or default)
        current = {
            reviewed_translations.source_hash(v)
            for vs in reviewed_translations.source_variants(responses, source, default).values()
            for v in vs
        }
        where = f"translations/{language}.yml"
        for name, variants in (document.get("responses") or {}).items():
            for i, v in enumerate(variants):
                at = f"{where} {name}[{i}]"
                if name not in responses:
                    findings.append(
                        Finding("warning", "translations", f"{name} is not in the domain", at)
                    )
                elif str(v.get("source_hash") or "") not in current:
                    findings.append(
                        Finding(
                            "warning",
                            "translations",
                            f"{name} ({language}) is stale: its '{source}' text changed "
                            "since it was translated (not used until translated again)",
                            at,
                        )
                    )
                elif not reviewed_translations.is_reviewed(v):
                    findings.append(
                        Finding(
                            "warning",
                            "translations",
                            f"{name} ({language}) is a machine translation not reviewed yet",
                            at,
                        )
                    )
    return findings
