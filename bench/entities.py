"""System entities (nlu/system_entities.py): precision and recall per entity type and
language.

    python -m bench.entities [--limit 500]

``time`` in en and es: the date/time slots of Schuster et al. 2019 "Cross-lingual
Transfer Learning for Multilingual Task Oriented Dialog" (CC BY-SA; eval-en.tsv,
eval-es.tsv in ../shared/data/intent/multilingual_task_oriented_dialog_schuster2019),
the first ``--limit`` utterances per language: a predicted ``time`` counts when it
overlaps a gold ``datetime`` span. Its spans include durations and vague periods
("this weekend", "in the evening") that habla resolves only partly.

Every other type, and pt: no public labelled set on this machine, so a small set
written for this project (CASES below: chat sentences in the style of a shop's
customers, 4-6 per type and language); a prediction counts when its normalised value
equals the gold value. A small, self-built set: treat its figures as a smoke check.
Not a test; prints a Markdown table.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nlu.system_entities import SystemEntityExtractor

SCHUSTER = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "data"
    / "intent"
    / "multilingual_task_oriented_dialog_schuster2019"
    / "data"
    / "nlu"
    / "nlu_data"
)
Gold = list[tuple[str, Any]]
BR, ES, UK = "whatsapp:+5511900000000", "whatsapp:+34600000000", "whatsapp:+447700900000"

CASES: dict[str, list[tuple[str, str, Gold]]] = {
    "en": [
        ("I want 3 hoodies", UK, [("number", 3)]),
        ("twenty-one caps please", UK, [("number", 21)]),
        ("one hundred and five items in total", UK, [("number", 105)]),
        ("I'll take two", UK, [("number", 2)]),
        (
            "it cost €20 and shipping was 4.90 EUR",
            UK,
            [
                ("amount-of-money", {"amount": "20", "currency": "EUR"}),
                ("amount-of-money", {"amount": "4.90", "currency": "EUR"}),
            ],
        ),
        (
            "I paid $35.50 yesterday",
            UK,
            [("amount-of-money", {"amount": "35.50", "currency": "USD"}), ("time", None)],
        ),
        ("refund me 30 pounds", UK, [("amount-of-money", {"amount": "30", "currency": "GBP"})]),
        ("my email is jane.doe@example.com", UK, [("email", "jane.doe@example.com")]),
        (
            "send it to Bob_Smith+shop@Mail.Example.org thanks",
            UK,
            [("email", "Bob_Smith+shop@mail.example.org")],
        ),
        ("call me on 07700 900123", UK, [("phone-number", "+447700900123")]),
        ("my number is +1 415 555 2671", UK, [("phone-number", "+14155552671")]),
        ("reach me at +34 612 345 678", UK, [("phone-number", "+34612345678")]),
        (
            "the link https://shop.example/p/42 does not work",
            UK,
            [("url", "https://shop.example/p/42")],
        ),
        ("see www.example.com/returns.", UK, [("url", "https://www.example.com/returns")]),
        ("hello, where is my order?", UK, []),
        ("I want to talk to a human", UK, []),
    ],
    "es": [
        ("quiero 3 sudaderas", ES, [("number", 3)]),
        ("veintiuno, por favor", ES, [("number", 21)]),
        (
            "doscientos cuarenta y tres euros no, perdón, dos",
            ES,
            [("amount-of-money", None), ("number", 2)],
        ),
        ("me cobraron 15,90 €", ES, [("amount-of-money", {"amount": "15.90", "currency": "EUR"})]),
        (
            "pagué 1.234,50 euros",
            ES,
            [("amount-of-money", {"amount": "1234.50", "currency": "EUR"})],
        ),
        ("son 100 dólares", ES, [("amount-of-money", {"amount": "100", "currency": "USD"})]),
        ("mi correo es maria.lopez@correo.es", ES, [("email", "maria.lopez@correo.es")]),
        ("escríbeme a juan@Example.COM", ES, [("email", "juan@example.com")]),
        ("llámame al 612 345 678", ES, [("phone-number", "+34612345678")]),
        ("mi número es +34 699 111 222", ES, [("phone-number", "+34699111222")]),
        ("mira https://tienda.example/es/ayuda", ES, [("url", "https://tienda.example/es/ayuda")]),
        ("en www.tienda.es pone otra cosa", ES, [("url", "https://www.tienda.es")]),
        ("hola, ¿dónde está mi pedido?", ES, []),
        ("quiero hablar con una persona", ES, []),
    ],
    "pt": [
        ("quero 3 camisetas", BR, [("number", 3)]),
        ("vinte e um, por favor", BR, [("number", 21)]),
        ("mil e quinhentos", BR, [("number", 1500)]),
        ("paguei R$ 15,90", BR, [("amount-of-money", {"amount": "15.90", "currency": "BRL"})]),
        ("custou 50 reais", BR, [("amount-of-money", {"amount": "50", "currency": "BRL"})]),
        ("são 20 euros", BR, [("amount-of-money", {"amount": "20", "currency": "EUR"})]),
        ("meu e-mail é joao.silva@exemplo.com.br", BR, [("email", "joao.silva@exemplo.com.br")]),
        ("manda para ana@Loja.COM", BR, [("email", "ana@loja.com")]),
        ("me liga no 11 98765-4321", BR, [("phone-number", "+5511987654321")]),
        ("meu número é +55 21 99876-5432", BR, [("phone-number", "+5521998765432")]),
        (
            "o link https://loja.example/pt/trocas não abre",
            BR,
            [("url", "https://loja.example/pt/trocas")],
        ),
        ("veja em www.loja.com.br", BR, [("url", "https://www.loja.com.br")]),
        ("olá, quero comprar uma camiseta", BR, []),
        ("quero falar com um humano", BR, []),
    ],
}


def schuster(lang: str, limit: int) -> list[tuple[str, list[tuple[int, int]]]]:
    path = SCHUSTER / lang / f"eval-{lang}.tsv"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines()[:limit]:
        cols = line.split("\t")
        spans = []
        for slot in filter(None, cols[1].split(",")):
            start, end, name = slot.split(":", 2)
            if name == "datetime":
                spans.append((int(start), int(end)))
        out.append((cols[2], spans))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=500)
    args = parser.parse_args()
    SystemEntityExtractor.clock = staticmethod(
        lambda: datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
    )
    extractor = SystemEntityExtractor(SystemEntityExtractor.get_default_config())
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # tp fp fn
    for lang, cases in CASES.items():
        for text, phone, gold in cases:
            found = extractor.extract(text, {"language": {"code": lang}, "phone": phone})
            found = [e for e in found if e["entity"] != "time"]  # time: measured below
            unmatched = [(name, value) for name, value in gold if name != "time"]
            for e in found:
                hit = next(
                    (g for g in unmatched if g[0] == e["entity"] and g[1] in (None, e["value"])),
                    None,
                )
                if hit is not None:
                    unmatched.remove(hit)
                    counts[(e["entity"], lang)][0] += 1
                else:
                    counts[(e["entity"], lang)][1] += 1
            for name, _ in unmatched:
                counts[(name, lang)][2] += 1
    sources = {}
    for lang in ("en", "es"):
        rows = schuster(lang, args.limit)
        sources[lang] = len(rows)
        for text, spans in rows:
            times = [
                (ent["start"], ent["end"])
                for ent in extractor.extract(text, {"language": {"code": lang}})
                if ent["entity"] == "time"
            ]
            c = counts[("time", lang)]
            for ts, te in times:
                if any(ts < ge and gs < te for gs, ge in spans):
                    c[0] += 1
                else:
                    c[1] += 1
            c[2] += sum(1 for gs, ge in spans if not any(ts < ge and gs < te for ts, te in times))
    print("| entity | language | data | gold | found | precision | recall |")
    print("|---|---|---|---|---|---|---|")
    for (name, lang), (tp, fp, fn) in sorted(counts.items()):
        data = f"Schuster 2019 eval ({sources[lang]})" if name == "time" else "self-built"
        p = tp / (tp + fp) if tp + fp else float("nan")
        r = tp / (tp + fn) if tp + fn else float("nan")
        print(f"| {name} | {lang} | {data} | {tp + fn} | {tp + fp} | {p:.2f} | {r:.2f} |")


if __name__ == "__main__":
    main()
