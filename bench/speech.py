"""Speech to text on spoken radiology questions: word error rate and real-time factor.

Questions are synthesised with espeak-ng (en-us, 150 words per minute) and resampled to 16 kHz
mono with sox, then transcribed by ``webapp.speech`` with each packaged Whisper model, with and
without the radiology vocabulary prompt. The real-time factor is compute seconds per second of
audio (model load excluded; it is reported apart). Run with ``nice``; it takes about a minute.

    .venv/bin/python bench/speech.py [--models base tiny.en] [--threads 0]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from webapp.speech import SpeechRecognizer, word_error_rate

QUESTIONS = [
    "Is there a pleural effusion or a pneumothorax on this chest radiograph?",
    "Is the heart enlarged on this chest X-ray?",
    "Measure the width of the heart and the width of the chest.",
    "Segment both lungs and tell me their areas in square millimetres.",
    "Are there any nodules or masses in the right upper lobe?",
    "Find similar cases with cardiomegaly and show their reports.",
    "Is the heart enlarged?",
]


def speak(text: str, out: Path) -> Path:
    """espeak-ng speech as 16 kHz mono 16-bit WAV."""
    raw = out.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True)
    return out


def main() -> None:
    """Print a markdown table per model and prompt setting, and the worst transcripts."""
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["base", "tiny.en"])
    p.add_argument("--threads", type=int, default=0, help="CTranslate2 CPU threads (0: all)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        clips = [speak(q, home / f"q{i}.wav") for i, q in enumerate(QUESTIONS)]
        print("| model | vocabulary prompt | load s | mean WER | median WER | max WER | "
              "audio s (total) | compute s (total) | real-time factor |")
        print("|---|---|---|---|---|---|---|---|---|")
        notes = []
        for model in args.models:
            for prompt in (True, False):
                rec = SpeechRecognizer(model, home=home, cpu_threads=args.threads,
                                       vocabulary=None if prompt else "")
                t0 = time.perf_counter()
                rec.load()
                load_s = time.perf_counter() - t0
                wers, audio_s, comp_s = [], 0.0, 0.0
                for q, clip in zip(QUESTIONS, clips, strict=True):
                    t = rec.transcribe(clip)
                    w = word_error_rate(q, t.text)
                    wers.append(w)
                    audio_s += t.audio_s
                    comp_s += t.elapsed_s
                    if w > 0:
                        notes.append(f"{rec.model_name} prompt={prompt}: {w:.0%} "
                                     f"'{q}' -> '{t.text}'")
                print(f"| {rec.model_name} | {'yes' if prompt else 'no'} | {load_s:.1f} | "
                      f"{statistics.mean(wers):.1%} | {statistics.median(wers):.1%} | "
                      f"{max(wers):.1%} | {audio_s:.1f} | {comp_s:.1f} | "
                      f"{comp_s / audio_s:.2f} |")
        print("\nErrors:")
        for n in notes:
            print("-", n)


if __name__ == "__main__":
    main()
