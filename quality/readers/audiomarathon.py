"""AudioMarathon (He et al. 2025, arXiv:2510.07293) annotations -> manifest rows, for the paper's Table 1.

Layout, read from the benchmark's own loaders in github.com/DabDans/AudioMarathon, src/Qwen_2.5_Omni/Others/
(`load_slue_dataset` in SLUE_qwen2.5.py, `main` of race_qwen2.5.py, `load_librispeech_long_dataset` in
LibriSpeech_qwen2.5.py, `load_desed_qa_dataset` in DESED_qwen2.5.py, `load_gtzan_metadata` in GTZAN_qwen2.5.py,
`load_tau_acoustic_scene_dataset` in TAU_qwen2.5.py, `load_vesus_dataset` in VESUS_qwen2.5.py,
`load_concatenated_audio_dataset` in Vox_age_qwen2.5.py and Vox_qwen2.5.py) and the README's "Data Preparation":

| task | dataset | annotation file (found anywhere under --root) | audio `path` relative to | fields |
|---|---|---|---|---|
| SER | SLUE | merged_audio_data.json: [{...}] | the file's folder | path, question, choice_a..d, answer_gt (letter) |
| SCR | RACE | race_benchmark.json: [{...}] | the file's folder | audio_path, question, options [..], answer (letter) |
| ASR | LibriSpeech | test-clean/<speaker>/<chapter>/<utt>.flac | - | <utt>.txt or <speaker>-<chapter>.trans.txt |
| SED | DESED | desed_sound_event_detection_task.json: {"tasks": [{...}]} | the file's folder | path, question, choices {"A": ..}, answer_gt |
| MC | GTZAN | music_genre_classification_meta.json: [{...}] | the file's folder | path, question, choice_a..d, answer_gt |
| ASC | TAU | acoustic_scene_task_meta.json: [{...}] | the file's folder | path, question, choice_a..d, answer_gt |
| ER | VESUS | audio_emotion_dataset.json: [{...}] | the file's folder | path, question, choice_a..d, answer_gt, person_id, emotion_label |
| SAR | VoxCeleb | age_classification_task_meta.json: [{...}] | <folder>/wav/ | path, question, choice_a..e, answer_gt (text) |
| SGR | VoxCeleb | gender_id_task_meta.json: [{...}] | <folder>/wav/ | path, question, choice_a..b, answer_gt (text) |

Categories follow the paper (Table 1 header and Sec. 4.1): SER, SCR, ASR semantic; SED, MC, ASC, ER, SAR, SGR acoustic.
Like the reference scripts, ER leaves out the "happy" clips of persons 2 and 10. Not reproduced: the gender
script's random male/female balancing (unseeded per call) and the HAD speech-detection task (not in Table 1).
ASR rows carry no choices and the reference transcript as `answer`; the question is the benchmark's ASR instruction.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from quality.readers.common import BenchmarkError, ImportResult, find_files, lettered, load_json, make_row

__all__ = ["TASKS", "read_audiomarathon"]

log = logging.getLogger("quality")

ASR_QUESTION = "Transcribe this audio accurately. Remove hesitation words like 'um', 'uh'."
ASR_SPLIT = "test-clean"
_CHOICE_KEYS = ("choice_a", "choice_b", "choice_c", "choice_d", "choice_e")


def _field(item: dict, key: str) -> object:
    if key not in item:
        raise ValueError(f"missing field {key!r}")
    return item[key]


def _flat(item: dict) -> tuple[object, object, list[tuple[str, str]], object]:
    """path, question, choices, answer of the choice_a..choice_e layout."""
    present = [k for k in _CHOICE_KEYS if k in item]
    if len(present) < 2:
        raise ValueError("missing fields 'choice_a', 'choice_b'")
    choices = lettered([item.get(k) for k in _CHOICE_KEYS[: _CHOICE_KEYS.index(present[-1]) + 1]])
    return _field(item, "path"), _field(item, "question"), choices, _field(item, "answer_gt")


def _race(item: dict) -> tuple[object, object, list[tuple[str, str]], object]:
    options = _field(item, "options")
    if not isinstance(options, list):
        raise ValueError(f"'options' is not a list ({options!r})")
    return _field(item, "audio_path"), _field(item, "question"), lettered(options), _field(item, "answer")


def _desed(item: dict) -> tuple[object, object, list[tuple[str, str]], object]:
    choices = _field(item, "choices")
    if not isinstance(choices, dict):
        raise ValueError(f"'choices' is not an object of lettered options ({choices!r})")
    pairs = [
        (str(k).upper(), str(v).strip())
        for k, v in sorted(choices.items())
        if v is not None and str(v).strip()
    ]
    return _field(item, "path"), _field(item, "question"), pairs, _field(item, "answer_gt")


@dataclass(frozen=True)
class _Task:
    dataset: str
    category: str
    annotation: str  # file name, or the LibriSpeech split folder for ASR
    fields: Callable[[dict], tuple] | None = None
    items_key: str | None = None  # {"tasks": [...]} instead of a top-level list
    audio_subdirs: tuple[str, ...] = ("", "wav")  # where `path` is looked up, first existing wins


TASKS: dict[str, _Task] = {
    "SER": _Task("SLUE", "semantic", "merged_audio_data.json", _flat),
    "SCR": _Task("RACE", "semantic", "race_benchmark.json", _race),
    "ASR": _Task("LibriSpeech", "semantic", ASR_SPLIT),
    "SED": _Task("DESED", "acoustic", "desed_sound_event_detection_task.json", _desed, items_key="tasks"),
    "MC": _Task("GTZAN", "acoustic", "music_genre_classification_meta.json", _flat),
    "ASC": _Task("TAU", "acoustic", "acoustic_scene_task_meta.json", _flat),
    "ER": _Task("VESUS", "acoustic", "audio_emotion_dataset.json", _flat),
    "SAR": _Task(
        "VoxCeleb", "acoustic", "age_classification_task_meta.json", _flat, audio_subdirs=("wav", "")
    ),
    "SGR": _Task("VoxCeleb", "acoustic", "gender_id_task_meta.json", _flat, audio_subdirs=("wav", "")),
}


def read_audiomarathon(root: Path, tasks: Sequence[str] | None = None) -> ImportResult:
    """Manifest rows for the AudioMarathon tasks under `root` (all nine Table 1 tasks when `tasks` is None).

    Tasks named explicitly must be present; with the default, absent tasks are logged and skipped.
    Raises BenchmarkError for a missing root, unknown task, unreadable annotation file or no task at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(
            f"AudioMarathon root {root} {'is not a folder' if root.exists() else 'does not exist'}"
        )
    names = _task_names(tasks)
    wanted = {TASKS[t].annotation for t in names if t != "ASR"}
    found = find_files(root, wanted, frozenset({ASR_SPLIT}) if "ASR" in names else frozenset())
    result = ImportResult()
    present = 0
    for name in names:
        spec = TASKS[name]
        paths = found[spec.annotation]
        if not paths:
            if tasks is not None:
                raise BenchmarkError(f"task {name}: no {spec.annotation} under {root}")
            log.warning(
                "AudioMarathon %s (%s): no %s under %s, skipped", name, spec.dataset, spec.annotation, root
            )
            continue
        if len(paths) > 1:
            listed = ", ".join(str(p) for p in paths[:3])
            raise BenchmarkError(
                f"task {name}: {len(paths)} copies of {spec.annotation} ({listed}); point --root at one"
            )
        present += 1
        if name == "ASR":
            _read_librispeech(paths[0], root, result)
        else:
            _read_json_task(name, spec, paths[0], root, result)
    if not present:
        looked = ", ".join(sorted(wanted | ({ASR_SPLIT + "/"} if "ASR" in names else set())))
        raise BenchmarkError(f"no AudioMarathon annotations under {root} (looked for {looked})")
    return result


def _task_names(tasks: Sequence[str] | None) -> list[str]:
    if tasks is None:
        return list(TASKS)
    names = [t.upper() for t in tasks]
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise BenchmarkError(
            f"unknown AudioMarathon task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}"
        )
    return list(dict.fromkeys(names))


def _read_json_task(name: str, spec: _Task, path: Path, root: Path, result: ImportResult) -> None:
    data = load_json(path)
    items = data
    if spec.items_key:
        items = data.get(spec.items_key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        shape = f'an object with a "{spec.items_key}" list' if spec.items_key else "a list of objects"
        raise BenchmarkError(f"{path}: expected {shape}")
    rel = path.relative_to(root).as_posix()
    filtered = 0
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ValueError(f"expected an object, got {type(item).__name__}")
            if name == "ER" and _vesus_left_out(item):
                filtered += 1
                continue
            audio_rel, question, choices, answer = spec.fields(item)
            if not isinstance(audio_rel, str) or not audio_rel.strip():
                raise ValueError(f"missing audio path ({audio_rel!r})")
            result.add(
                make_row(
                    audio=_audio_path(path.parent, audio_rel.strip(), spec.audio_subdirs),
                    id=f"{name}-{i:05d}",
                    task=name,
                    category=spec.category,
                    question=question,
                    choices=choices,
                    answer=answer,
                    meta={"benchmark": "audiomarathon", "dataset": spec.dataset, "source": rel, "index": i},
                )
            )
        except ValueError as e:
            result.problems.append(f"{rel} row {i}: {e}")
    if filtered:
        log.info(
            "AudioMarathon ER: left out %d 'happy' clips of persons 2 and 10, as the benchmark does", filtered
        )


def _vesus_left_out(item: dict) -> bool:
    person = re.search(r"\d+", str(item.get("person_id", "")))
    return (
        bool(person)
        and int(person.group()) in (2, 10)
        and str(item.get("emotion_label", "")).strip().lower() == "happy"
    )


def _audio_path(base: Path, rel: str, subdirs: tuple[str, ...]) -> Path:
    candidates = [base / sub / rel for sub in subdirs]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _read_librispeech(split_dir: Path, root: Path, result: ImportResult) -> None:
    rel = split_dir.relative_to(root).as_posix()
    for flac in sorted(split_dir.glob("*/*/*.flac")):
        utt = flac.stem
        speaker, chapter = flac.parent.parent.name, flac.parent.name
        try:
            result.add(
                make_row(
                    audio=flac,
                    id=f"ASR-{utt}",
                    task="ASR",
                    category=TASKS["ASR"].category,
                    question=ASR_QUESTION,
                    choices=None,
                    answer=_transcript(flac, speaker, chapter),
                    meta={
                        "benchmark": "audiomarathon",
                        "dataset": "LibriSpeech",
                        "source": rel,
                        "utterance": utt,
                    },
                )
            )
        except ValueError as e:
            result.problems.append(f"{rel}/{speaker}/{chapter}/{flac.name}: {e}")


def _transcript(flac: Path, speaker: str, chapter: str) -> str:
    own = flac.with_suffix(".txt")
    if own.is_file():
        return own.read_text(encoding="utf-8").strip()
    trans = flac.parent / f"{speaker}-{chapter}.trans.txt"
    if trans.is_file():
        for line in trans.read_text(encoding="utf-8").splitlines():
            key, _, text = line.partition(" ")
            if key == flac.stem:
                return text.strip()
    raise ValueError(f"no transcript ({own.name}, or a line in {trans.name})")
