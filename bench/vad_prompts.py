"""Where speech starts and ends on human and synthetic prompts, against the truth, per bed.

    .venv/bin/python bench/vad_prompts.py [--threshold-dbfs -36.3] [--edge-dbfs -55 | --no-edge] [--plot FILE]

Prints, per prompt and bed, the detected onset and end minus the truth (bench/_harness/prompts.py
says how the truth is taken): onset > 0 is late, end < 0 cuts the ending. "file" is the recording
itself (how a reference's span is taken); the other columns are the prompt received on a tape,
through PCMU, over a bed. The Asterisk prompts need Debian's asterisk-core-sounds-en-wav.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._harness.prompts import BEDS, Measured, Prompt, asterisk_dir, asterisk_prompts, measure, synthetic_prompts
from voiceload.audio.vad import DEFAULT_SPEECH, SpeechSettings

COLUMNS = ("file", *BEDS)


def _errors(m: Measured, audible: bool) -> tuple[float, float] | None:
    on, end = (m.audible_onset_err_ms, m.audible_end_err_ms) if audible else (m.onset_err_ms, m.end_err_ms)
    if audible and m.bed == "file":
        on, end = m.onset_err_ms, m.end_err_ms
    return None if on is None or end is None else (on, end)


def _cell(err: tuple[float, float] | None) -> str:
    return f"{'missed':>13}" if err is None else f"{err[0]:+6.0f}/{err[1]:+6.0f}"


def table(prompts: list[Prompt], speech: SpeechSettings, *, audible: bool) -> None:
    print(f"{'prompt':16} {'truth ms':>11}  " + "  ".join(f"{c:>13}" for c in COLUMNS))
    worst: dict[str, list[float]] = {c: [] for c in COLUMNS}
    for p in prompts:
        cells = []
        for col in COLUMNS:
            err = _errors(measure(p, col, speech), audible)
            cells.append(_cell(err))
            worst[col].append(float("inf") if err is None else max(abs(err[0]), abs(err[1])))
        print(f"{p.name:16} {p.onset / 8:5.0f}-{p.end / 8:<5.0f}  " + "  ".join(cells))
    print(f"{'max |error|':16} {'':11}  " + "  ".join(f"{max(worst[c]):>13.0f}" for c in COLUMNS))
    print(f"{'<= 20 ms':16} {'':11}  " + "  ".join(
        f"{sum(e <= 20 for e in worst[c]):>7}/{len(worst[c]):<5}" for c in COLUMNS))


def plot(prompts: list[Prompt], speech: SpeechSettings, path: str) -> None:
    """Each prompt's 2 ms envelope with the truth (green) and the detected span (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from voiceload.audio.vad import BLOCK, speech_span

    _fig, axs = plt.subplots(len(prompts), 1, figsize=(12, 1.6 * len(prompts)))
    for ax, p in zip(axs, prompts, strict=True):
        k = len(p.samples) // BLOCK
        peak = np.abs(p.samples[: k * BLOCK].astype(np.float64)).reshape(k, BLOCK).max(axis=1)
        ax.plot(np.arange(k) * 2, 20 * np.log10(np.maximum(peak, 1e-3) / 32767), lw=0.6)
        span = speech_span(p.samples, speech)
        for at, colour in ((p.onset, "g"), (p.end, "g"), (span.onset, "r"), (span.end, "r")):
            ax.axvline(at / 8, color=colour, lw=0.8)
        ax.set_ylim(-100, 0)
        ax.set_title(p.name, fontsize=8)
        ax.tick_params(labelsize=6)
    plt.tight_layout()
    plt.savefig(path, dpi=70)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold-dbfs", type=float, default=DEFAULT_SPEECH.threshold_dbfs)
    ap.add_argument("--edge-dbfs", type=float, default=DEFAULT_SPEECH.edge_dbfs)
    ap.add_argument("--no-edge", action="store_true",
                    help="edges stop at the threshold, as before 2026-12-04 (a tape's bed still raises the threshold)")
    ap.add_argument("--plot", help="write each prompt's envelope with truth and detected span to this PNG")
    args = ap.parse_args()
    speech = SpeechSettings(threshold_dbfs=args.threshold_dbfs, edge_dbfs=None if args.no_edge else args.edge_dbfs)
    directory = asterisk_dir()
    prompts = (asterisk_prompts(directory) if directory else []) + synthetic_prompts()
    if directory is None:
        print("asterisk-core-sounds-en-wav is not installed: synthetic prompts only", file=sys.stderr)
    edge = "off" if speech.edge_dbfs is None else f"{speech.edge_dbfs:.1f}"
    print(f"threshold {speech.threshold_dbfs:.1f} dBFS, edge {edge} dBFS; cells: onset/end error in ms")
    print("\nagainst the voice's edges (onset > 0: late; end < 0: cut):")
    table(prompts, speech, audible=False)
    print("\nagainst where the voice is at least as loud as the bed (RMS over 5 ms >= the bed's RMS):")
    table(prompts, speech, audible=True)
    if args.plot:
        plot(prompts, speech, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
