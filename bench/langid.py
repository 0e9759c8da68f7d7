"""Language identification: each detector with and without the conversation prior.

    python -m bench.langid [--limit 1000] [--detectors lingua,langdetect]

Test data: lingua-py's test sets (``../shared/data/langid/lingua-py/language-testdata``:
1,000 single words, word pairs and sentences per language) for en, es, pt, fr, de, it,
ar, hi, zh, ja. Published figures (``../shared/data/reference/lingua_py_accuracy_10langs.csv``)
were measured choosing among all 75 languages lingua knows; here detectors choose among
these 10, the way habla restricts them to the bot's languages.

Columns:
* ``alone``: the detector on the text, no context.
* ``with prior``: the conversation is already in the text's language (its earlier
  messages); the policy keeps or switches. This is what a user in a Spanish
  conversation who types one Spanish word experiences.
* ``switch``: the conversation is in another language and the user writes this text:
  how often the policy switches to the text's language (the cost of the prior).

Not a test; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import time
from pathlib import Path

from i18n.detect import Detector
from i18n.language import LanguagePolicy
from runtime.providers import LANGUAGE_DETECTORS

PROJECT = Path(__file__).resolve().parent.parent
DATA = PROJECT.parent / "shared" / "data"
TESTDATA = DATA / "langid" / "lingua-py" / "language-testdata"
REFERENCE = DATA / "reference" / "lingua_py_accuracy_10langs.csv"
LANGUAGES = ["en", "es", "pt", "fr", "de", "it", "ar", "hi", "zh", "ja"]
SETS = {"single-words": "single words", "word-pairs": "word pairs", "sentences": "sentences"}


def load(test_set: str, limit: int) -> dict[str, list[str]]:
    out = {}
    for code in LANGUAGES:
        lines = (TESTDATA / test_set / f"{code}.txt").read_text(encoding="utf-8").splitlines()
        out[code] = [line.strip() for line in lines if line.strip()][:limit]
    return out


def published() -> dict[tuple[str, str], float]:
    """(test set, detector) → mean published accuracy over the 10 languages."""
    rows = list(csv.DictReader(REFERENCE.open()))
    result = {}
    for test_set in SETS:
        for column, name in (("lingua_high", "lingua"), ("langdetect", "langdetect")):
            values = [float(r[column]) for r in rows if r["test_type"] == test_set and r[column]]
            result[(test_set, name)] = statistics.fmean(values)
    return result


def evaluate(detector: Detector, data: dict[str, list[str]]) -> dict[str, float]:
    policy = LanguagePolicy(detector, LANGUAGES)  # the defaults habla runs with
    alone = prior = switch = total = 0
    t0 = time.perf_counter()
    calls = 0
    for i, (code, texts) in enumerate(data.items()):
        other = LANGUAGES[(i + 1) % len(LANGUAGES)]
        for text in texts:
            total += 1
            calls += 1
            alone += detector.detect(text).language == code
            prior += policy.decide(text, current=code).language == code
            switch += policy.decide(text, current=other).language == code
    elapsed = time.perf_counter() - t0
    return {
        "alone": 100 * alone / total,
        "prior": 100 * prior / total,
        "switch": 100 * switch / total,
        "us_per_call": elapsed / (calls * 3) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="texts per language and set")
    parser.add_argument("--detectors", default="lingua,langdetect")
    args = parser.parse_args()
    reference = published()
    rows = []
    for name in args.detectors.split(","):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        detector = LANGUAGE_DETECTORS.load(name, Detector)(LANGUAGES)
        load_s = time.perf_counter() - t0
        rss_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        for test_set, label in SETS.items():
            result = evaluate(detector, load(test_set, args.limit))
            rows.append((name, label, reference[(test_set, name)], result, load_s, rss_mb))
            print(f"{name} {label}: {result}", flush=True)
    print(f"\n{args.limit} texts per language and set; 10 languages; {os.cpu_count()} CPUs\n")
    print(
        "| detector | test set | published (75 langs) | alone (10 langs) | with prior | "
        "switch to it | µs/call |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, label, ref, r, _, _ in rows:
        print(
            f"| {name} | {label} | {ref:.1f} % | {r['alone']:.1f} % | {r['prior']:.1f} % | "
            f"{r['switch']:.1f} % | {r['us_per_call']:.0f} |"
        )
    print()
    for name in dict.fromkeys(r[0] for r in rows):
        load_s, rss = next((r[4], r[5]) for r in rows if r[0] == name)
        print(f"{name}: models loaded in {load_s:.1f} s, +{rss:.0f} MB resident")


if __name__ == "__main__":
    main()
