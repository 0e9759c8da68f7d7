"""Sentiment per message (nlu/sentiment.py) against human labels, beside the
majority class.

    python -m bench.sentiment

English: the 4,200 tweets rated by 20 people each that the VADER paper published
(bench/data/sentiment/SOURCE.md). Caveat: it is VADER's own evaluation set, so the
English figure is the favourable one its authors report, not a held-out domain.
Gold: the mean rating; binary = its sign (0 left out); 3 classes = negative below
-0.5, positive above 0.5, neutral between. Predicted with the component's default
thresholds (VADER's ±0.05) and with the example bot's (-0.5 for negative).

Spanish and Portuguese: no public labelled set is on this machine (../shared/data
has none), and Spanish has no offline method (always neutral): not measured here.
Not a test; prints a Markdown table.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from nlu.sentiment import label, score

DATA = Path(__file__).parent / "data" / "sentiment" / "vader_tweets_GroundTruth.txt"


def gold3(rating: float) -> str:
    return "negative" if rating < -0.5 else "positive" if rating > 0.5 else "neutral"


def main() -> None:
    rows = []
    for line in DATA.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3:
            rows.append((float(parts[1]), parts[2]))
    scored = [(rating, score(text, "en")[0]) for rating, text in rows]
    print(f"English, VADER tweets (n={len(rows)})\n")
    print("| task | thresholds | method | accuracy | majority class | its accuracy |")
    print("|---|---|---|---|---|---|")
    binary = [(r, s) for r, s in scored if r != 0]
    gold = ["positive" if r > 0 else "negative" for r, _ in binary]
    pred = ["positive" if s >= 0 else "negative" for _, s in binary]
    majority, count = Counter(gold).most_common(1)[0]
    acc = sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)
    print(
        f"| positive/negative (n={len(gold)}) | sign | VADER | {acc:.3f} | {majority} "
        f"| {count / len(gold):.3f} |"
    )
    gold = [gold3(r) for r, _ in scored]
    majority, count = Counter(gold).most_common(1)[0]
    for name, neg, pos in [
        ("±0.05 (default)", -0.05, 0.05),
        ("-0.5 / 0.05 (example bot)", -0.5, 0.05),
    ]:
        pred = [label(s, neg, pos) for _, s in scored]
        acc = sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)
        print(f"| 3 classes | {name} | VADER | {acc:.3f} | {majority} | {count / len(gold):.3f} |")
    # the handoff: how precise is "negative" at -0.5 for messages people rated negative
    neg_pred = [r for r, s in scored if s <= -0.5]
    if neg_pred:
        precision = sum(r < 0 for r in neg_pred) / len(neg_pred)
        recall = len([1 for r, s in scored if s <= -0.5 and r < -0.5]) / max(
            1, sum(r < -0.5 for r, _ in scored)
        )
        print(
            f"\nnegative at -0.5 (offers a person): {len(neg_pred)} messages, "
            f"{precision:.3f} of them rated negative by people; recall of clearly "
            f"negative (< -0.5) messages {recall:.3f}"
        )


if __name__ == "__main__":
    main()
