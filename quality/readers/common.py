"""Shared pieces of the benchmark readers: manifest rows, answer resolution, annotation discovery.

A reader turns one benchmark's annotation files into rows of the pipeline's manifest format:
{"audio": absolute path, "id", "task", "category", "question", "choices": [...] | None, "answer", "prompt", "meta"}.
`answer` is always the text of the correct choice (or the reference transcript when `choices` is None), so the
rows score with quality.scoring exactly like the synthetic suite; `prompt` is `task_prompt("qa", question, choices)`
as in the synthetic suite (quality.synth). A row that cannot be converted is skipped and reported as a problem string
("FILE row N: why"); whole-file or root errors raise BenchmarkError with a one-line message.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from headrouter.engine.prompt import task_prompt

__all__ = [
    "CATEGORIES",
    "BenchmarkError",
    "ImportResult",
    "find_files",
    "lettered",
    "load_json",
    "make_row",
    "resolve_answer",
]

CATEGORIES = ("semantic", "acoustic", "mixed")
# "B", "(B)", "B.", "B)", "B:", optionally followed by the option text: "(B) Jazz", "B. Jazz"
_LETTER = re.compile(r"^\s*(?:\(([A-Za-z])\)|([A-Za-z])(?:[.):]|(?=\s*$)))\s*(.*?)\s*$")


class BenchmarkError(ValueError):
    """A benchmark root or annotation file that cannot be read at all (one-line message)."""


@dataclass
class ImportResult:
    """Rows in manifest format, problems of skipped rows, and rows per task."""

    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.counts[row["task"]] = self.counts.get(row["task"], 0) + 1


def _norm(text: str) -> str:
    return " ".join(str(text).casefold().split()).strip(" .")


def resolve_answer(answer: object, choices: list[tuple[str, str]]) -> str:
    """The text of the correct choice, from an answer given as the text, a letter ("B") or "(B) text".

    `choices` are (letter, text) pairs in order; raises ValueError when the answer names no choice or is ambiguous.
    """
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"empty or non-text answer {answer!r}")
    texts = [t for _, t in choices]
    if answer in texts:
        return answer
    same = [t for t in texts if _norm(t) == _norm(answer)]
    if len(same) == 1:
        return same[0]
    if len(same) > 1:
        raise ValueError(f"answer {answer!r} matches several choices {texts}")
    m = _LETTER.match(answer)
    if m:
        letter = (m.group(1) or m.group(2)).upper()
        by_letter = {lt.upper(): t for lt, t in choices}
        if letter not in by_letter:
            raise ValueError(
                f"answer {answer!r} names option {letter}, but the options are {sorted(by_letter)}"
            )
        text = by_letter[letter]
        if m.group(3) and _norm(m.group(3)) != _norm(text):
            raise ValueError(f"answer {answer!r} names option {letter}, but option {letter} is {text!r}")
        return text
    raise ValueError(f"answer {answer!r} is not one of the choices {texts}")


def lettered(texts: list[object]) -> list[tuple[str, str]]:
    """(letter, text) pairs for options A, B, C...; empty or missing options are dropped, letters kept."""
    return [(chr(65 + i), str(t).strip()) for i, t in enumerate(texts) if t is not None and str(t).strip()]


def make_row(
    *,
    audio: Path,
    id: str,
    task: str,
    category: str,
    question: object,
    choices: list[tuple[str, str]] | None,
    answer: object,
    meta: dict,
) -> dict:
    """One manifest row; raises ValueError (the problem) for a missing file, question, choices or answer."""
    assert category in CATEGORIES, category
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"missing question ({question!r})")
    if not audio.is_file():
        raise ValueError(f"audio file not found: {audio}")
    if choices is not None:
        if len(choices) < 2:
            raise ValueError(f"needs at least 2 non-empty choices, got {[t for _, t in choices]}")
        if len({_norm(t) for _, t in choices}) != len(choices):
            raise ValueError(f"duplicate choices {[t for _, t in choices]}")
        answer = resolve_answer(answer, choices)
    elif not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"missing reference text ({answer!r})")
    texts = [t for _, t in choices] if choices is not None else None
    question = question.strip()
    return {
        "audio": str(audio.absolute()),
        "id": id,
        "task": task,
        "category": category,
        "question": question,
        "choices": texts,
        "answer": answer.strip(),
        "prompt": task_prompt("qa", question, texts),
        "meta": meta,
    }


def find_files(root: Path, names: set[str], dir_names: frozenset[str] = frozenset()) -> dict[str, list[Path]]:
    """Every file called one of `names` (and directory called one of `dir_names`) under `root`, sorted.

    Follows symbolic links (datasets are often linked into one root) without walking a directory twice.
    """
    found: dict[str, list[Path]] = {n: [] for n in names | dir_names}
    seen: set[str] = set()
    for top, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in dirs:
            if d in dir_names:
                found[d].append(Path(top) / d)
        for f in files:
            if f in names:
                found[f].append(Path(top) / f)
    return {n: sorted(p) for n, p in found.items()}


def load_json(path: Path) -> object:
    """Parsed JSON of an annotation file; BenchmarkError with the file and reason otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"{path}: cannot read ({' '.join(str(e).split())})") from None
