"""MMAU-Pro (Kumar et al. 2025, arXiv:2508.13992) annotations -> manifest rows, for the paper's Tables 2 and 3.

Layout of the Hugging Face dataset (gamma-lab-umd/MMAU-Pro, also linked as sonalkum/MMAU-Pro): `test.parquet`
next to `data/` (data.zip unpacked), one row per question with columns `id`, `audio_path` (a list of paths like
"data/<uuid>.wav"; several for multi-audio questions), `question`, `choices` (list of option texts), `answer`
(the correct option's text), `category`, plus `sub-cat`, `task_identifier`, skills and `kwargs`. Read from the
dataset card, the benchmark's evaluate_mmau_pro_comprehensive.py (splits on `category`: "open" is LLM-judged,
"instruction following" regex-checked, every other category is multiple choice over `choices`) and NeMo-Skills'
nemo_skills/dataset/mmau-pro/prepare.py (keeps `audio_path` entries relative, "data/<uuid>.wav").

Categories: closed-form `category` values are sound, music, speech, voice_chat, spatial_audio, the mixed-domain
sound_music, music_speech, sound_speech, sound_music_speech, and multi (multi-audio). The paper (Sec. 4.1) keeps
the five single domains, 2,567 questions: semantic = speech + voice_chat, acoustic = sound + music + spatial_audio;
that is the default selection. The mixed-domain categories can be imported with --tasks and get category "mixed".
Not importable: multi (several audio files per question; a manifest row holds one), open and instruction
following (no choices; scored by an LLM judge or format rules, not by quality.scoring). A row's task is its category.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from quality.readers.common import BenchmarkError, ImportResult, find_files, lettered, make_row

__all__ = ["CATEGORY", "PAPER_TASKS", "read_mmau_pro"]

log = logging.getLogger("quality")

ANNOTATION = "test.parquet"
CATEGORY = {
    "speech": "semantic",
    "voice_chat": "semantic",
    "sound": "acoustic",
    "music": "acoustic",
    "spatial_audio": "acoustic",
    "sound_music": "mixed",
    "music_speech": "mixed",
    "sound_speech": "mixed",
    "sound_music_speech": "mixed",
}
PAPER_TASKS = ("speech", "voice_chat", "sound", "music", "spatial_audio")
_WHY_NOT = {
    "multi": "several audio files per question",
    "open": "open-ended answers are judged by an LLM",
    "instruction following": "answers are checked by format rules",
}


def read_mmau_pro(root: Path, tasks: Sequence[str] | None = None) -> ImportResult:
    """Manifest rows for the MMAU-Pro categories in `tasks` (default: the paper's five) from `root`/test.parquet.

    Raises BenchmarkError for a missing root or annotation file, an unreadable parquet file or an unknown task.
    """
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(
            f"MMAU-Pro root {root} {'is not a folder' if root.exists() else 'does not exist'}"
        )
    selected = _task_names(tasks)
    paths = find_files(root, {ANNOTATION})[ANNOTATION]
    if not paths:
        raise BenchmarkError(f"no MMAU-Pro {ANNOTATION} under {root}")
    if len(paths) > 1:
        raise BenchmarkError(
            f"{len(paths)} copies of {ANNOTATION} under {root} ({paths[0]}, {paths[1]}); point --root at one"
        )
    path = paths[0]
    items = _read_parquet(path)
    rel = path.relative_to(root).as_posix()
    result = ImportResult()
    left_out: Counter[str] = Counter()
    seen: set[str] = set()
    for i, item in enumerate(items):
        category = str(item.get("category") or "")
        if category not in selected:
            left_out[category or "(none)"] += 1
            continue
        try:
            row = _row(item, i, path.parent, rel, category)
            if row["id"] in seen:
                raise ValueError(f"duplicate id {row['id']!r}")
            seen.add(row["id"])
            result.add(row)
        except ValueError as e:
            result.problems.append(f"{rel} row {i}: {e}")
    if left_out:
        log.info("MMAU-Pro: not selected: %s", ", ".join(f"{c} {n}" for c, n in sorted(left_out.items())))
    return result


def _task_names(tasks: Sequence[str] | None) -> set[str]:
    if tasks is None:
        return set(PAPER_TASKS)
    for t in tasks:
        if t in _WHY_NOT:
            raise BenchmarkError(f"MMAU-Pro category {t!r} cannot be imported: {_WHY_NOT[t]}")
        if t not in CATEGORY:
            raise BenchmarkError(f"unknown MMAU-Pro category {t!r}; choose from {', '.join(CATEGORY)}")
    return set(tasks)


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise BenchmarkError(
            f"{path}: not a readable parquet file ({' '.join(str(e).split())[:200]})"
        ) from None
    missing = [
        c for c in ("audio_path", "question", "choices", "answer", "category") if c not in table.column_names
    ]
    if missing:
        raise BenchmarkError(f"{path}: missing column(s) {', '.join(missing)}")
    return table.to_pylist()


def _row(item: dict, i: int, base: Path, rel: str, category: str) -> dict:
    audio = item.get("audio_path")
    paths = [audio] if isinstance(audio, str) else list(audio or [])
    if len(paths) != 1 or not isinstance(paths[0], str) or not paths[0].strip():
        raise ValueError(f"expected one audio path, got {audio!r}")
    audio_rel = paths[0].strip()
    audio_rel = audio_rel[2:] if audio_rel.startswith("./") else audio_rel
    choices = item.get("choices")
    if not isinstance(choices, list):
        raise ValueError(f"'choices' is not a list ({choices!r})")
    meta = {"benchmark": "mmau-pro", "source": rel, "index": i}
    for key in ("sub-cat", "task_identifier"):
        if item.get(key) is not None:
            meta[key] = item[key]
    return make_row(
        audio=base / audio_rel,
        id=str(item.get("id") or f"mmau-pro-{i:05d}"),
        task=category,
        category=CATEGORY[category],
        question=item.get("question"),
        choices=lettered(choices),
        answer=item.get("answer"),
        meta=meta,
    )
