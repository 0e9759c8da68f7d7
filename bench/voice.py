"""Offline voice engines: Whisper base (int8) accuracy and speed, espeak round trips,
and the latency of a whole voice-note reply.

    python -m bench.voice [--quick] [--beams 1,5] [--runs 10] [--no-vad] [--encode full,short]

Test data (``../shared/data/speech``), every clip first encoded as a WhatsApp voice
note (OGG/Opus, 24 kb/s) the way users send them:
* Picovoice Leopard's test clips (en, es, pt, fr, de, it; ja and ko reported apart
  with a character error rate) and their transcripts. ``test_data.json`` gives one
  ``error_rate`` (0.025) per clip: the most Leopard's own tests allow, used here as
  the anchor (``ratio`` = our WER / 0.025).
* pocketsphinx's LibriVox clips (en) and JFK's inaugural sentence (en, FLAC).

Columns: WER after lowercasing and removing punctuation; language identified among
the bot's six languages (and among all of Whisper's 99); real-time factor (processing
time / audio duration, lower is faster). Latency: a 5 s Spanish voice note in (OGG/Opus)
→ duration check → transcript (language identified among the six) → espeak reply →
OGG/Opus ready, against the 1.5 s p50 target. Round trip: espeak speaks a sentence,
Whisper hears it back.

Encoding: ``full`` runs Whisper's encoder on the fixed 30-s window, ``short`` on the
utterance plus a 3 s margin (``HABLA_WHISPER_SHORT_ENCODE``), falling back to the full
window when the transcript looks degenerate (``fallbacks``). Each is measured on the
voice notes and again as 8 kHz phone audio: every clip resampled to 8 kHz, μ-law
encoded and decoded, and resampled back to 16 kHz (stdlib ``audioop``) before Whisper
hears it; the latency then starts from that phone-quality 5 s note. The comparison
table at the end puts both modes side by side.

Not a test; prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import audioop
import json
import os
import statistics
import string
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import jiwer
import numpy as np

from voice.audio import duration_of, pcm_to_ogg_opus
from voice.stt.whisper import WhisperSTT
from voice.tts.espeak import EspeakTTS

PROJECT = Path(__file__).resolve().parent.parent
SPEECH = PROJECT.parent / "shared" / "data" / "speech"
LEOPARD = SPEECH / "picovoice-leopard" / "resources"
LIBRIVOX = SPEECH / "pocketsphinx" / "test" / "data" / "librivox"
JFK = SPEECH / "openai-whisper" / "tests" / "jfk.flac"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)
BOT_LANGUAGES = ["en", "es", "pt", "fr", "de", "it"]
TARGET_P50_S = 1.5
REPLY_ES = "Claro, tu pedido llegará mañana por la tarde. ¿Quieres algo más?"
ROUND_TRIP = {  # a greeting, a harder reply, a thank-you (not chosen by how they came back)
    "en": [
        "Hello, how can I help you today?",
        "Your order will arrive tomorrow afternoon. Do you need anything else?",
        "Thank you for your purchase, see you soon.",
    ],
    "es": [
        "Hola, ¿en qué puedo ayudarte hoy?",
        "Tu pedido llegará mañana por la tarde. ¿Necesitas algo más?",
        "Gracias por tu compra, hasta pronto.",
    ],
    "pt": [
        "Olá, como posso ajudar você hoje?",
        "O seu pedido vai chegar amanhã à tarde. Precisa de mais alguma coisa?",
        "Obrigado pela sua compra, até breve.",
    ],
    "fr": [
        "Bonjour, comment puis-je vous aider aujourd'hui?",
        "Votre commande arrivera demain après-midi. Avez-vous besoin d'autre chose?",
        "Merci pour votre achat, à bientôt.",
    ],
    "de": [
        "Hallo, wie kann ich Ihnen heute helfen?",
        "Ihre Bestellung kommt morgen Nachmittag an. Brauchen Sie sonst noch etwas?",
        "Danke für Ihren Einkauf, bis bald.",
    ],
    "it": [
        "Ciao, come posso aiutarti oggi?",
        "Il tuo ordine arriverà domani pomeriggio. Hai bisogno di altro?",
        "Grazie per il tuo acquisto, a presto.",
    ],
}


def normalize(text: str) -> str:
    """Lowercase, punctuation removed (any script), whitespace collapsed."""
    kept = (
        " " if unicodedata.category(c).startswith("P") or c in string.punctuation else c
        for c in text.lower()
    )
    return " ".join("".join(kept).split())


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalize(reference), normalize(hypothesis) or "<empty>"))


def cer(reference: str, hypothesis: str) -> float:
    ref, hyp = normalize(reference).replace(" ", ""), normalize(hypothesis).replace(" ", "")
    return float(jiwer.cer(ref, hyp or "?"))


@dataclass(frozen=True)
class Clip:
    name: str
    language: str
    transcript: str
    note: bytes  # OGG/Opus
    duration_s: float
    anchor: float | None = None  # Leopard's allowed error rate


def clips() -> tuple[list[Clip], list[Clip]]:
    """(Leopard clips, LibriVox + JFK clips), each encoded as a voice note."""
    data = json.loads((LEOPARD / ".test" / "test_data.json").read_text(encoding="utf-8"))
    leopard = []
    for t in data["tests"]["language_tests"]:
        wav = (LEOPARD / "audio_samples" / t["audio_file"]).read_bytes()
        note = pcm_to_ogg_opus(wav)
        leopard.append(
            Clip(
                t["audio_file"],
                t["language"],
                t["transcript"],
                note,
                duration_of(note, "audio/ogg"),
                t["error_rate"],
            )
        )
    english = []
    for wav_path in sorted(LIBRIVOX.glob("*.wav")):
        text = wav_path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        note = pcm_to_ogg_opus(wav_path.read_bytes())
        english.append(Clip(wav_path.stem[-4:], "en", text, note, duration_of(note, "audio/ogg")))
    from voice.audio import decode_to_pcm16k

    samples, seconds = decode_to_pcm16k(JFK.read_bytes(), "audio/flac")
    english.append(Clip("jfk", "en", JFK_TEXT, pcm_to_ogg_opus(samples), seconds))
    return leopard, english


def phone_quality(samples: np.ndarray) -> bytes:
    """16 kHz float samples → 8 kHz → μ-law → linear → 16 kHz, as a 16-bit WAV."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    narrow, _ = audioop.ratecv(pcm, 2, 1, 16_000, 8_000, None)
    narrow = audioop.ulaw2lin(audioop.lin2ulaw(narrow, 2), 2)
    wide, _ = audioop.ratecv(narrow, 2, 1, 8_000, 16_000, None)
    from voice.calls import wav16k

    return wav16k(wide)


def phone_clip(clip: Clip) -> Clip:
    from voice.audio import decode_to_pcm16k

    samples, _ = decode_to_pcm16k(clip.note, "audio/ogg")
    return replace(clip, note=phone_quality(samples))


def content_type(clip: Clip) -> str:
    return "audio/wav" if clip.note.startswith(b"RIFF") else "audio/ogg"


@dataclass
class Row:
    clip: Clip
    text: str
    language: str | None  # among the bot's languages (or the clip's set for ja/ko)
    any_language: str | None  # among all of Whisper's languages
    seconds: float

    @property
    def error(self) -> float:
        if self.clip.language in ("ja", "ko"):
            return cer(self.clip.transcript, self.text)
        return wer(self.clip.transcript, self.text)


async def run_clips(stt: WhisperSTT, items: Sequence[Clip], free: bool) -> list[Row]:
    """Transcribe each clip among the bot's languages; with ``free``, again among all of
    Whisper's languages (language id does not depend on the beam, so once is enough)."""
    rows = []
    for clip in items:
        languages = BOT_LANGUAGES if clip.language in BOT_LANGUAGES else [clip.language, "en"]
        kind = content_type(clip)
        t0 = time.perf_counter()
        tr = await stt.transcribe(clip.note, kind, languages)
        seconds = time.perf_counter() - t0
        any_language = (await stt.transcribe(clip.note, kind, [])).language if free else None
        rows.append(Row(clip, tr.text, tr.language, any_language, seconds))
    return rows


def pooled_wer(rows: Sequence[Row]) -> float:
    refs = [normalize(r.clip.transcript) for r in rows]
    hyps = [normalize(r.text) or "<empty>" for r in rows]
    return float(jiwer.wer(refs, hyps))


def rtf(rows: Sequence[Row]) -> float:
    return sum(r.seconds for r in rows) / sum(r.clip.duration_s for r in rows)


async def latency(
    stt: WhisperSTT, tts: EspeakTTS, runs: int, phone: bool = False
) -> tuple[list[float], str]:
    """Seconds for: 5 s OGG/Opus note → duration → transcript → espeak reply → OGG/Opus
    (with ``phone``, the note is 8 kHz μ-law quality audio in a WAV)."""
    from voice.audio import decode_to_pcm16k

    samples, _ = decode_to_pcm16k(
        (LEOPARD / "audio_samples" / "test_es.wav").read_bytes(), "audio/wav"
    )
    note = pcm_to_ogg_opus(samples[: 5 * 16_000])  # "Las arenas ... de grano medio"
    kind = "audio/ogg"
    if phone:
        note, kind = phone_quality(decode_to_pcm16k(note, kind)[0]), "audio/wav"
    times, text = [], ""
    for _ in range(runs + 1):  # the first run warms caches and is not counted
        t0 = time.perf_counter()
        await asyncio.to_thread(duration_of, note, kind)
        transcript = await stt.transcribe(note, kind, BOT_LANGUAGES)
        speech = await tts.synthesize(REPLY_ES, transcript.language or "es")
        assert speech.audio.startswith(b"OggS")
        times.append(time.perf_counter() - t0)
        text = transcript.text
    return times[1:], text


async def round_trips(stt: WhisperSTT, tts: EspeakTTS) -> list[tuple[str, int, float, str]]:
    """(language, sentences heard in that language, pooled WER, worst hearing)."""
    out = []
    for language, texts in ROUND_TRIP.items():
        heard = []
        for text in texts:
            speech = await tts.synthesize(text, language)
            heard.append(await stt.transcribe(speech.audio, "audio/ogg", BOT_LANGUAGES))
        refs = [normalize(t) for t in texts]
        hyps = [normalize(h.text) or "<empty>" for h in heard]
        right = sum(h.language == language for h in heard)
        errors = [wer(t, h.text) for t, h in zip(texts, heard, strict=True)]
        worst = heard[errors.index(max(errors))].text
        out.append((language, right, float(jiwer.wer(refs, hyps)), worst))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(round(q * (len(ordered) - 1))), len(ordered) - 1)]


@dataclass(frozen=True)
class Summary:
    beam: int
    mode: str  # full | short
    margin: float  # seconds after the utterance (short)
    audio: str  # voice note | 8 kHz μ-law
    wer6: float
    wer_en: float
    cer_cjk: float
    lid6: str
    rtf: float
    clip_p50_s: float
    fallbacks: str
    p50: float
    p90: float


def summarize(
    stt: WhisperSTT,
    mode: str,
    audio: str,
    rows: list[Row],
    cjk_rows: list[Row],
    eng_rows: list[Row],
    fallbacks: str,
    times: list[float],
) -> Summary:
    lid6 = sum(r.language == r.clip.language for r in rows + eng_rows)
    everything = rows + cjk_rows + eng_rows
    return Summary(
        stt.beam_size,
        mode,
        stt.encode_margin_s,
        audio,
        pooled_wer(rows),
        pooled_wer(eng_rows),
        statistics.mean(r.error for r in cjk_rows) if cjk_rows else 0.0,
        f"{lid6}/{len(rows) + len(eng_rows)}",
        rtf(everything),
        statistics.median(r.seconds for r in everything),
        fallbacks,
        statistics.median(times),
        percentile(times, 0.9),
    )


def print_rows(rows: list[Row], cjk_rows: list[Row], eng_rows: list[Row]) -> None:
    print(
        "| clip | lang | WER | Leopard allows | ratio | lang id (6) | lang id (99) | RTF | heard |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows + cjk_rows:
        anchor = r.clip.anchor or 0.0
        kind = "CER" if r.clip.language in ("ja", "ko") else ""
        print(
            f"| {r.clip.name} | {r.clip.language} | {r.error:.3f} {kind} | {anchor:.3f} | "
            f"{r.error / anchor if anchor else 0:.1f} | {r.language} | "
            f"{r.any_language or '–'} | {r.seconds / r.clip.duration_s:.3f} | {r.text} |"
        )
    for r in eng_rows:
        print(
            f"| {r.clip.name} | en | {r.error:.3f} | – | – | {r.language} | "
            f"{r.any_language or '–'} | {r.seconds / r.clip.duration_s:.3f} | {r.text[:60]} |"
        )


async def bench(beams: list[int], runs: int, vad: bool, modes: list[str]) -> dict[str, object]:
    t0 = time.perf_counter()
    leopard, english = clips()
    print(f"clips encoded as OGG/Opus in {time.perf_counter() - t0:.1f} s", flush=True)
    main6 = [c for c in leopard if c.language in BOT_LANGUAGES]
    cjk = [c for c in leopard if c.language not in BOT_LANGUAGES]
    phone = {
        "main6": [phone_clip(c) for c in main6],
        "cjk": [phone_clip(c) for c in cjk],
        "english": [phone_clip(c) for c in english],
    }
    tts = EspeakTTS()
    await tts.start()
    results: dict[str, object] = {
        "cpus": os.cpu_count(),
        "runs": runs,
        "vad": vad,
        "load_average": os.getloadavg()[0],
    }
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.2f} (timings are noisy above ~0.5)")
    lid_all = 0
    summaries: list[Summary] = []
    for beam in beams:
        for mode in modes:
            stt = WhisperSTT(
                beam_size=beam,
                vad_filter=vad,
                cache_dir=PROJECT / ".habla" / "models" / "whisper-base",
                short_encode=mode == "short",
            )
            t0 = time.perf_counter()
            await stt.start()
            load_s = time.perf_counter() - t0
            print(
                f"\n## Whisper base, int8, beam {beam}, {mode} encoding, "
                f"VAD {'on' if vad else 'off'}, {stt.cpu_threads} threads",
                flush=True,
            )
            print(f"model loaded in {load_s:.2f} s\n")
            free = beam == beams[0] and mode == modes[0]
            rows = await run_clips(stt, main6, free)
            cjk_rows = await run_clips(stt, cjk, free)
            eng_rows = await run_clips(stt, english, free)
            print_rows(rows, cjk_rows, eng_rows)
            lid6 = sum(r.language == r.clip.language for r in rows + eng_rows)
            n6, n_all = len(rows) + len(eng_rows), len(rows) + len(cjk_rows) + len(eng_rows)
            if free:  # language id does not depend on the beam: measured with the first one
                lid_all = sum(r.any_language == r.clip.language for r in rows + cjk_rows + eng_rows)
            fallbacks = f"{stt.fallbacks}/{stt.short_encodes}" if mode == "short" else "–"
            print()
            print(f"Leopard 6 languages: pooled WER {pooled_wer(rows):.3f} (Leopard allows 0.025)")
            print(f"LibriVox + JFK (en): pooled WER {pooled_wer(eng_rows):.3f}")
            print(
                f"language id: {lid6}/{n6} among the 6 bot languages, "
                f"{lid_all}/{n_all} among all 99 (incl. ja, ko)"
            )
            print(f"real-time factor: {rtf(rows + cjk_rows + eng_rows):.3f}")
            if mode == "short":
                print(f"short encodings redone on the full window: {fallbacks}")

            times, heard = await latency(stt, tts, runs)
            p50, p90 = statistics.median(times), percentile(times, 0.9)
            print(
                f"\nvoice note 5.0 s → transcript → espeak reply → OGG/Opus, {len(times)} runs: "
                f"p50 {p50:.2f} s, p90 {p90:.2f} s; target p50 {TARGET_P50_S} s → "
                f"ratio {p50 / TARGET_P50_S:.2f} ({'meets' if p50 <= TARGET_P50_S else 'misses'})"
            )
            print(f"  heard: {heard!r}")
            summaries.append(
                summarize(stt, mode, "voice note", rows, cjk_rows, eng_rows, fallbacks, times)
            )

            trips = await round_trips(stt, tts)
            print("\n| round trip (espeak → whisper) | language right | WER | worst hearing |")
            print("|---|---|---|---|")
            for language, right, error, worst in trips:
                n = len(ROUND_TRIP[language])
                print(f"| {language} | {right}/{n} | {error:.3f} | {worst} |")

            print(f"\n### 8 kHz μ-law phone audio, beam {beam}, {mode} encoding\n", flush=True)
            before = (stt.fallbacks, stt.short_encodes)
            p_rows = await run_clips(stt, phone["main6"], False)
            p_cjk = await run_clips(stt, phone["cjk"], False)
            p_eng = await run_clips(stt, phone["english"], False)
            print_rows(p_rows, p_cjk, p_eng)
            p_fallbacks = (
                f"{stt.fallbacks - before[0]}/{stt.short_encodes - before[1]}"
                if mode == "short"
                else "–"
            )
            p_times, p_heard = await latency(stt, tts, runs, phone=True)
            summaries.append(
                summarize(stt, mode, "8 kHz μ-law", p_rows, p_cjk, p_eng, p_fallbacks, p_times)
            )
            print(
                f"\nLeopard 6: pooled WER {pooled_wer(p_rows):.3f}; en: {pooled_wer(p_eng):.3f}; "
                f"phone-quality 5 s note p50 {statistics.median(p_times):.2f} s "
                f"(heard {p_heard!r})"
            )
            await stt.close()
            key = f"beam{beam}" if mode == "full" else f"beam{beam}_short"
            results[key] = {
                "load_s": load_s,
                "wer": {r.clip.language: r.error for r in rows + cjk_rows},
                "wer_leopard6": pooled_wer(rows),
                "wer_english": pooled_wer(eng_rows),
                "langid_6": lid6 / n6,
                "langid_99": lid_all / n_all,
                "rtf": rtf(rows + cjk_rows + eng_rows),
                "latency_p50_s": p50,
                "latency_p90_s": p90,
                "fallbacks": fallbacks,
                "round_trip_wer": {lang: e for lang, _, e, _ in trips},
                "round_trip_language_right": {lang: n for lang, n, _, _ in trips},
                "phone_8k_ulaw": {
                    "wer": {r.clip.language: r.error for r in p_rows + p_cjk},
                    "wer_leopard6": pooled_wer(p_rows),
                    "wer_english": pooled_wer(p_eng),
                    "rtf": rtf(p_rows + p_cjk + p_eng),
                    "latency_p50_s": statistics.median(p_times),
                    "latency_p90_s": percentile(p_times, 0.9),
                    "fallbacks": p_fallbacks,
                },
            }

    print("\n## Full window vs short encoding (same run)\n")
    print(
        "| beam | encoder input | audio | WER Leopard-6 | WER en | CER ja+ko | lang id (6) "
        "| RTF | per clip p50 | redone on full | 5 s note p50 | p90 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for x in summaries:
        window = "30 s window" if x.mode == "full" else f"utterance + {x.margin:g} s"
        print(
            f"| {x.beam} | {window} | {x.audio} | {x.wer6:.3f} | {x.wer_en:.3f} | "
            f"{x.cer_cjk:.3f} | {x.lid6} | {x.rtf:.3f} | {x.clip_p50_s:.2f} s | "
            f"{x.fallbacks} | {x.p50:.2f} s | {x.p90:.2f} s |"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="beam 5 only, 5 latency runs")
    parser.add_argument("--beams", default="1,5", help="beam sizes to compare")
    parser.add_argument("--runs", type=int, default=10, help="latency runs")
    parser.add_argument("--no-vad", action="store_true", help="Whisper without the VAD filter")
    parser.add_argument(
        "--encode",
        default="full,short",
        help="encoder input to compare: full (30 s window), short (utterance + margin)",
    )
    parser.add_argument("--out", default=str(PROJECT / "bench" / "results" / "voice.json"))
    args = parser.parse_args()
    beams = [5] if args.quick else [int(b) for b in args.beams.split(",")]
    runs = 5 if args.quick else args.runs
    modes = [m for m in args.encode.split(",") if m]
    if set(modes) - {"full", "short"}:
        parser.error("--encode takes full and/or short")
    results = asyncio.run(bench(beams, runs, vad=not args.no_vad, modes=modes))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
