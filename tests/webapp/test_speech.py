"""Offline speech to text: packaged Whisper weights, real synthetic speech, into the agent.

Spoken questions are made with espeak-ng and resampled to 16 kHz mono with sox (Debian
packages that ``make test`` installs). Measured here with whisper base, beam 5 and the
radiology vocabulary prompt: WER 0.0-8.3 % on these questions (see bench/speech.py).
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from agent import AgentContext
from tests.fakes import ScriptedChatModel, final
from webapp.handlers import make_respond, make_transcribe
from webapp.sessions import Runner, new_thread
from webapp.speech import (
    AudioError,
    SpeechRecognizer,
    load_audio,
    whisper_model_dir,
    word_error_rate,
)

needs_tts = pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("sox")),
    reason="espeak-ng and sox are needed to make test speech (make test installs them)",
)


def speak(text: str, path) -> str:
    """``text`` spoken by espeak-ng (American English, 150 wpm) as 16 kHz mono 16-bit WAV."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(path)], check=True)
    return str(path)


@pytest.fixture(scope="module")
def speech_home(tmp_path_factory):
    """One home per module: the joined base model is 145 MB, made once."""
    return tmp_path_factory.mktemp("speech-home")


@pytest.fixture(scope="module")
def recognizer(speech_home):
    return SpeechRecognizer(home=speech_home).load()


def test_word_error_rate():
    assert word_error_rate("Is the heart enlarged?", "is the heart enlarged") == 0.0
    assert word_error_rate("a b c d", "a x c") == pytest.approx(0.5)  # 1 sub + 1 del
    assert word_error_rate("pleural effusion", "pleural effusion present") == pytest.approx(0.5)
    assert word_error_rate("", "") == 0.0


def test_base_model_parts_are_joined_once(speech_home):
    tmp_path = speech_home
    name, folder = whisper_model_dir("base", tmp_path)
    assert name == "whisper-base" and folder == tmp_path / "models" / "whisper-base"
    size = (folder / "model.bin").stat().st_size
    assert size > 140_000_000 and (folder / "tokenizer.json").exists()
    mtime = (folder / "model.bin").stat().st_mtime_ns
    assert whisper_model_dir("auto", tmp_path)[1] == folder
    assert (folder / "model.bin").stat().st_mtime_ns == mtime  # not joined again
    name, folder = whisper_model_dir("tiny.en", tmp_path)
    assert name == "whisper-tiny.en" and (folder / "model.bin").exists()


def test_microphone_tuple_is_resampled_to_16k():
    t = np.arange(48_000) / 48_000
    tone = (np.sin(2 * np.pi * 440 * t) * 20_000).astype(np.int16)
    audio = load_audio((48_000, np.stack([tone, tone], axis=1)))
    assert audio.dtype == np.float32 and audio.shape == (16_000,)
    assert 0.55 < float(np.abs(audio).max()) < 0.65


def test_bad_audio_is_refused_with_a_reason(tmp_path):
    rec = SpeechRecognizer(home=tmp_path, max_audio_s=2)
    with pytest.raises(AudioError, match="silent"):
        rec.transcribe(np.zeros(16_000, np.float32))
    with pytest.raises(AudioError, match="limit is 2 s"):
        rec.transcribe(np.full(48_000, 0.1, np.float32))
    with pytest.raises(AudioError, match="empty"):
        rec.transcribe(np.zeros(0, np.float32))
    assert rec._model is None  # refused before any weights were loaded


@pytest.mark.slow
@needs_tts
def test_spoken_question_is_transcribed_with_the_words_right(recognizer, tmp_path):
    question = "Is there a pleural effusion or a pneumothorax on this chest radiograph?"
    t = recognizer.transcribe(speak(question, tmp_path / "q.wav"))
    wer = word_error_rate(question, t.text)
    assert t.model == "whisper-base"
    assert wer <= 0.15, (t.text, wer)  # measured 0.083 ("a" before pneumothorax dropped)
    for word in ("pleural", "effusion", "pneumothorax", "chest", "radiograph"):
        assert word in t.text.lower()
    assert 4 < t.audio_s < 6 and t.real_time_factor < 3


@pytest.mark.slow
@needs_tts
def test_spoken_question_reaches_the_agent(recognizer, tmp_path, store):
    model = ScriptedChatModel.of([final("No image to look at.", [], 0.1)] * 6)
    ctx = AgentContext(llm=model, tools=[], home=tmp_path, checkpoint="memory")
    ctx._store = store
    transcribe = make_transcribe(lambda: recognizer)
    text, status = transcribe(speak("Is the heart enlarged?", tmp_path / "h.wav"), "")
    assert word_error_rate("Is the heart enlarged?", text) == 0.0, text
    assert status.startswith("🎤 transcribed") and "whisper-base" in status
    history, *_ = list(make_respond(Runner(ctx))(text, [], [], new_thread()))[-1]
    assert history[0] == {"role": "user", "content": text}
    asked = str(model.seen[0][-1].content).lower()
    assert "heart" in asked and "enlarged" in asked  # the planner read the spoken question
