"""Per-sample answer scoring for the synthetic tasks (and any manifest with `answer` / `choices`).

- transcription (`digits`, or any row without choices): word accuracy = max(0, 1 - WER) with jiwer, after
  normalisation (lowercase, punctuation dropped, numerals spelled as digit words: "3 1" -> "three one").
- multiple choice / classification (rows with `choices`): 1.0 when the normalised prediction is exactly the
  answer, else 0.0. A prediction that is empty, names another choice, or names several choices scores 0.
Classification F1 over a whole task is computed by the evaluation job from these predictions.
"""

from __future__ import annotations

import re

__all__ = ["TRANSCRIPTION_TASKS", "choice_score", "exact_match", "normalize", "score", "word_accuracy"]

TRANSCRIPTION_TASKS = frozenset({"digits"})
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def normalize(text: str | None) -> str:
    """Lowercase, spell single digits as words, drop punctuation, collapse whitespace."""
    if not text:
        return ""
    text = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", text.lower())
    return " ".join(re.sub(r"[^a-z' ]+", " ", text).split())


def exact_match(prediction: str | None, answer: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize(prediction) == normalize(answer) != "")


def word_accuracy(prediction: str | None, reference: str) -> float:
    """max(0, 1 - WER) of the normalised prediction against the reference (jiwer); empty prediction -> 0."""
    import jiwer

    ref, hyp = normalize(reference), normalize(prediction)
    if not ref:
        raise ValueError("empty reference")
    if not hyp:
        return 0.0
    return max(0.0, 1.0 - float(jiwer.wer(ref, hyp)))


def choice_score(
    prediction: str | None, answer: str, choices: list[str] | tuple[str, ...] | None = None
) -> float:
    """1.0 when the prediction is exactly the answer choice (after normalisation), else 0.0."""
    if choices is not None and normalize(answer) not in {normalize(c) for c in choices}:
        raise ValueError(f"answer {answer!r} is not one of the choices {list(choices)}")
    return exact_match(prediction, answer)


def score(row: dict, prediction: str | None) -> float:
    """Score one prediction against a manifest row: word accuracy for transcription, choice match otherwise."""
    if row.get("task") in TRANSCRIPTION_TASKS or not row.get("choices"):
        return word_accuracy(prediction, row["answer"])
    return choice_score(prediction, row["answer"], row["choices"])
