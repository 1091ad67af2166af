"""The synthetic benchmark: bit-identical regeneration, manifest format, task labels, answer scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from quality.scoring import choice_score, normalize, score, word_accuracy
from quality.synth import sounds as snd
from quality.synth.generate import write_split
from quality.synth.tasks import (
    CATEGORY,
    DIGIT_WORDS,
    QUESTIONS,
    TASKS,
    format_prompt,
    make_sample,
    vocabulary,
)

N = len(TASKS)  # one sample of every task


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_regenerates_bit_identical_files(tmp_path):
    a = write_split(tmp_path / "a", "test", seed=7, n=N, long_fraction=0.0)
    b = write_split(tmp_path / "b", "test", seed=7, n=N, long_fraction=0.0)
    files_a, files_b = _files(a.parent), _files(b.parent)
    assert len(files_a) == N + 1
    assert files_a == files_b


def test_speech_is_identical_on_a_fresh_machine(tmp_path, monkeypatch):
    """espeak-ng's breath noise (the +f voices) must not depend on libpulse's first-run state in HOME."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("PULSE_RUNTIME_PATH", raising=False)
    clips = []
    for home in ("a", "b"):  # two fresh HOMEs: each the first espeak-ng run on a new machine
        (tmp_path / home).mkdir()
        monkeypatch.setenv("HOME", str(tmp_path / home))
        clips.append(snd.speak("4 9 5 6", "en-us+f2", 131, 35))
    assert np.array_equal(clips[0], clips[1])


def test_seeds_and_splits_give_different_audio():
    base = make_sample("test", 7, 0).audio
    assert not np.array_equal(base, make_sample("test", 8, 0).audio)
    assert not np.array_equal(base, make_sample("calib", 7, 0).audio)
    # a sample depends on (split, seed, index) only, not on how many are generated around it
    assert np.array_equal(base, make_sample("test", 7, 0, long_fraction=0.0).audio)


def test_manifest_rows_follow_the_pipeline_format(tmp_path):
    manifest = write_split(tmp_path, "calib", seed=3, n=N, long_fraction=0.0)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["task"] for r in rows] == list(TASKS)
    for r in rows:
        assert {"audio", "id", "task", "category", "question", "choices", "answer"} <= r.keys()
        assert r["category"] == CATEGORY[r["task"]] in ("semantic", "acoustic")
        assert r["question"] in QUESTIONS[r["task"]]
        assert r["prompt"] == format_prompt(r["question"], r["choices"])
        audio, sr = sf.read(tmp_path / r["audio"], dtype="float32")
        assert sr == 16000 and audio.ndim == 1
        assert abs(len(audio) / sr - r["duration_s"]) < 1e-3
        assert 0 <= r["content_start_s"] < r["content_end_s"] <= r["duration_s"] + 1e-3
        # the content is louder than the quiet background around it
        start, end = int(r["content_start_s"] * sr), int(r["content_end_s"] * sr)
        inside = np.sqrt(np.mean(audio[start:end] ** 2))
        outside = np.sqrt(np.mean(np.concatenate([audio[:start], audio[end:]]) ** 2))
        assert inside > 3 * outside  # >= 13 dB by construction
        if r["choices"] is None:
            assert r["task"] == "digits"
            assert all(w in DIGIT_WORDS for w in r["answer"].split()) and 3 <= len(r["answer"].split()) <= 5
        else:
            assert r["answer"] in r["choices"] and len(set(r["choices"])) == len(r["choices"])


def test_long_clip_holds_sparse_content_in_a_minute_of_background():
    s = make_sample("test", 11, 1, long_fraction=1.0)
    assert s.long and len(s.audio) / 16000 >= 60.0
    assert s.content_end_s - s.content_start_s < 10.0
    silent = np.mean(s.audio == 0.0)
    assert 0.1 < silent < 0.9  # alternating digital silence and quiet noise


def test_vocabulary_covers_every_prompt_and_answer():
    words = set(vocabulary())
    for i in range(2 * N):
        s = make_sample("train", 0, i)
        assert set(format_prompt(s.question, s.choices).split()) <= words
        assert set(s.answer.split()) <= words


def test_normalize_spells_digits_and_drops_punctuation():
    assert normalize(" Three, 1 4! ") == "three one four"
    assert normalize(None) == ""


@pytest.mark.parametrize("task", TASKS)
def test_right_answer_scores_one_wrong_or_malformed_scores_zero(task):
    row = next(
        {"task": s.task, "answer": s.answer, "choices": list(s.choices) if s.choices else None}
        for s in (make_sample("test", 5, i) for i in range(N))
        if s.task == task
    )
    assert score(row, row["answer"]) == 1.0
    assert score(row, row["answer"].upper() + ".") == 1.0
    for bad in ("", None, "<unk>", "zzz qqq"):
        assert score(row, bad) == 0.0
    if row["choices"]:
        other = next(c for c in row["choices"] if c != row["answer"])
        assert score(row, other) == 0.0
        assert score(row, f"{row['answer']} or {other}") == 0.0  # naming several choices is malformed
    else:
        words = row["answer"].split()
        wrong = " ".join(DIGIT_WORDS[(DIGIT_WORDS.index(w) + 1) % 10] for w in words)
        assert score(row, wrong) == 0.0
        assert score(row, " ".join(words[:-1])) == pytest.approx(1 - 1 / len(words))


def test_word_accuracy_accepts_numerals_and_floors_at_zero():
    assert word_accuracy("3 1 4", "three one four") == 1.0
    assert word_accuracy("one two three four five six seven", "one") == 0.0
    with pytest.raises(ValueError):
        word_accuracy("one", "")


def test_choice_score_rejects_an_answer_outside_the_choices():
    with pytest.raises(ValueError):
        choice_score("emma", "emma", ["anna", "ben"])
