#!/usr/bin/env python3
"""Speech recognition benchmark: word error rate and decode time of the gateway's recogniser.

Runs `voiceload.sut.asr.Recogniser` (restricted to each scenario's caller transcripts, as
`voiceload bot --brain rasa` does) over every caller recording of the given scenarios, after a
G.711 µ-law encode/decode round trip like the phone line's and with silence around the speech
like a call tape's, and prints per recording the words, the word error rate and the decode time.
Not a test: it prints numbers for the report.

    .venv/bin/python bench/asr_wer.py                       # demo, booking, examples/*/scenario*.yaml
    .venv/bin/python bench/asr_wer.py scenarios/demo.yaml --silence-ms 0
    .venv/bin/python bench/asr_wer.py --one-grammar   # all scenarios' phrases in one grammar: harder
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from voiceload.audio import g711, wav  # noqa: E402
from voiceload.core.scenario import load_scenario  # noqa: E402
from voiceload.errors import UserError  # noqa: E402
from voiceload.sut import asr  # noqa: E402


def default_scenarios() -> list[Path]:
    found = [REPO / "scenarios" / "demo.yaml", REPO / "scenarios" / "booking.yaml"]
    found += sorted((REPO / "examples").glob("*/scenario*.yaml"))
    return [p for p in found if p.exists()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", type=Path, help="scenario files (default: demo, booking, examples)")
    ap.add_argument("--silence-ms", type=int, default=400, help="digital silence added before and after")
    ap.add_argument("--repeat", type=int, default=5, help="decodes per recording (decode time: the median)")
    ap.add_argument("--one-grammar", action="store_true",
                    help="one grammar of every scenario's phrases instead of one per scenario")
    args = ap.parse_args()
    scenarios = args.scenarios or default_scenarios()
    loaded = []
    for path in scenarios:
        try:
            sc = load_scenario(path)
            asr.scenario_phrases(sc)
        except UserError as exc:  # an example meant to be wrong, or one without transcripts
            print(f"skipped {path}: {str(exc).splitlines()[0]}")
            continue
        loaded.append(sc)
    shared = asr.Recogniser([p for sc in loaded for p in asr.scenario_phrases(sc)]) if args.one_grammar else None

    t0 = time.perf_counter()
    asr.Recogniser(["warm up"])  # loads the model once per process
    print(f"model load {1000 * (time.perf_counter() - t0):.0f} ms")
    total_words = total_errors = 0
    decode_ms: list[float] = []
    audio_s = 0.0
    for sc in loaded:
        rec = shared or asr.Recogniser.for_scenario(sc)
        path = sc.path
        print(f"\n{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: "
              f"{len(rec.phrases)} phrases in the grammar")
        for turn in sc.turns:
            ref = asr.normalise(turn.transcript or "")
            pad = np.zeros(wav.SAMPLE_RATE * args.silence_ms // 1000, dtype=np.int16)
            line = g711.round_trip(np.concatenate([pad, wav.load_wav(turn.caller), pad]))
            results = [rec.recognise(line) for _ in range(args.repeat)]
            hyp = results[0].text.split()
            errors = asr.word_errors(ref, hyp)
            ms = float(np.median([r.decode_ms for r in results]))
            total_words += len(ref)
            total_errors += errors
            decode_ms.append(ms)
            audio_s += len(line) / wav.SAMPLE_RATE
            print(f"  {turn.caller.name:24s} WER {100 * errors / max(1, len(ref)):5.1f} %  "
                  f"decode {ms:6.1f} ms for {results[0].speech_ms / 1000:.2f} s of speech  "
                  f"ref {' '.join(ref)!r}  hyp {' '.join(hyp)!r}")
    if decode_ms:
        print(f"\noverall: WER {100 * total_errors / max(1, total_words):.1f} % over {total_words} words, "
              f"{len(decode_ms)} recordings; decode median {np.median(decode_ms):.1f} ms, "
              f"max {max(decode_ms):.1f} ms; {sum(decode_ms) / 1000 / audio_s:.3f} s per s of call audio")


if __name__ == "__main__":
    main()
