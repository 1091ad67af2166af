"""Benchmark readers on small hand-made files in AudioMarathon's and MMAU-Pro's annotation layouts."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from jobs.import_benchmark import main as import_main
from quality.readers import BenchmarkError, read_audiomarathon, read_mmau_pro, resolve_answer
from quality.scoring import score
from quality.synth.tasks import format_prompt

CLIP = np.zeros(1600, dtype=np.float32)  # 0.1 s of silence at 16 kHz


def _audio(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, CLIP, 16000)


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _mc(path: str, question: str, choices: list[str], answer: str, **extra) -> dict:
    item = {"path": path, "question": question, "answer_gt": answer, **extra}
    item.update({f"choice_{'abcde'[i]}": c for i, c in enumerate(choices)})
    return item


@pytest.fixture
def marathon(tmp_path: Path) -> Path:
    """An AudioMarathon root with two or three rows per Table 1 task, laid out as the benchmark's loaders read it."""
    root = tmp_path / "AudioMarathon"
    slue = root / "subsetSLUE"
    for i in range(2):
        _audio(slue / "audio" / f"slue_{i}.wav")
    _json(
        slue / "merged_audio_data.json",
        [
            _mc("audio/slue_0.wav", "Which place is mentioned?", ["Paris", "Rome", "Oslo", "Lima"], "B",
                task_name="ner", uniq_id=7),
            _mc("audio/slue_1.wav", "Which person is mentioned?", ["Ann", "Bob", "Cy", "Dee"], "(D) Dee"),
        ],
    )  # fmt: skip
    race = root / "subsetrace_audio"
    _audio(race / "high" / "q0.wav")
    _json(
        race / "race_benchmark.json",
        [{"audio_path": "high/q0.wav", "question": "Why did Tom leave?", "options": ["rain", "work", "fun", "tired"],
          "answer": "C", "article_id": "high123", "question_idx": 0}],
    )  # fmt: skip
    split = root / "subsetlibrispeech-long" / "test-clean" / "61" / "70968"
    _audio(split / "61-70968-0000.flac")
    _audio(split / "61-70968-0001.flac")
    (split / "61-70968.trans.txt").write_text(
        "61-70968-0000 HE BEGAN A CONFUSED COMPLAINT\n61-70968-0001 AND SO ON\n"
    )
    (split / "61-70968-0001.txt").write_text("AND SO ON AND ON\n")  # own .txt wins, as in the loader
    desed = root / "subsetDESED" / "DESED_dataset" / "concatenated_audio"
    _audio(desed / "d0.wav")
    _json(
        desed / "desed_sound_event_detection_task.json",
        {"tasks": [{"path": "d0.wav", "task_type": "detection", "question": "What sound events are present?",
                    "choices": {"A": "Dog", "B": "Alarm bell", "C": "Frying", "D": "Speech"}, "answer_gt": "B"}]},
    )  # fmt: skip
    gtzan = root / "GTZAN" / "concatenated_audio"
    _audio(gtzan / "blues_001.wav")
    _json(
        gtzan / "music_genre_classification_meta.json",
        [_mc("blues_001.wav", "What is the genre of this music?", ["Blues", "Classical", "Rock", "Jazz"], "A",
             genre_label="blues")],
    )  # fmt: skip
    tau = root / "subsetTAU" / "concatenated_resampled"
    _audio(tau / "airport_0.wav")
    _json(
        tau / "acoustic_scene_task_meta.json",
        [_mc("airport_0.wav", "Where was this recorded?", ["park", "airport", "metro", "street"], "b",
             scene_label="airport")],
    )  # fmt: skip
    vesus = root / "VESUS"
    for name in ("e0.wav", "e1.wav"):
        _audio(vesus / "2" / name)
    _json(
        vesus / "audio_emotion_dataset.json",
        [
            _mc("2/e0.wav", "What emotion is expressed?", ["angry", "happy", "sad", "neutral"], "C",
                person_id="2", emotion_label="sad"),
            _mc("2/e1.wav", "What emotion is expressed?", ["angry", "happy", "sad", "neutral"], "B",
                person_id="person2", emotion_label="Happy"),  # left out, as in the benchmark's scripts
        ],
    )  # fmt: skip
    vox = root / "VoxCeleb" / "concatenated_audio"
    _audio(vox / "wav" / "id1" / "a.wav")
    _audio(vox / "wav" / "id2" / "b.wav")
    ages = [
        "Young Adult (18-30)",
        "Early Career (31-40)",
        "Mid Career (41-50)",
        "Senior (51-70)",
        "Elderly (71+)",
    ]
    _json(
        vox / "age_classification_task_meta.json",
        [_mc("id1/a.wav", "How old is the speaker?", ages, "Mid Career (41-50)", speaker_id_original="id1")],
    )
    _json(
        vox / "gender_id_task_meta.json",
        [
            _mc(
                "id2/b.wav",
                "What is the gender of the speaker?",
                ["Male", "Female"],
                "male",
                speaker_id_original="id2",
            )
        ],
    )
    return root


def _by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


def test_audiomarathon_rows_exact(marathon: Path):
    result = read_audiomarathon(marathon)
    assert result.problems == []
    rows = _by_id(result.rows)
    assert rows["SER-00000"] == {
        "audio": str((marathon / "subsetSLUE" / "audio" / "slue_0.wav").absolute()),
        "id": "SER-00000",
        "task": "SER",
        "category": "semantic",
        "question": "Which place is mentioned?",
        "choices": ["Paris", "Rome", "Oslo", "Lima"],
        "answer": "Rome",
        "prompt": "Which place is mentioned? Paris or Rome or Oslo or Lima",
        "meta": {"benchmark": "audiomarathon", "dataset": "SLUE", "source": "subsetSLUE/merged_audio_data.json",
                 "index": 0},
    }  # fmt: skip
    asr = rows["ASR-61-70968-0000"]
    assert asr["choices"] is None and asr["answer"] == "HE BEGAN A CONFUSED COMPLAINT"
    assert asr["audio"] == str(
        (marathon / "subsetlibrispeech-long/test-clean/61/70968/61-70968-0000.flac").absolute()
    )
    assert rows["ASR-61-70968-0001"]["answer"] == "AND SO ON AND ON"
    assert result.counts == {
        "SER": 2,
        "SCR": 1,
        "ASR": 2,
        "SED": 1,
        "MC": 1,
        "ASC": 1,
        "ER": 1,
        "SAR": 1,
        "SGR": 1,
    }


def test_audiomarathon_answers_map_to_choice_text(marathon: Path):
    rows = _by_id(read_audiomarathon(marathon).rows)
    assert rows["SER-00001"]["answer"] == "Dee"  # "(D) Dee"
    assert rows["SCR-00000"]["answer"] == "fun"  # RACE: letter into "options"
    assert rows["SED-00000"]["answer"] == "Alarm bell"  # DESED: {"A": ..} choices
    assert rows["MC-00000"]["answer"] == "Blues"
    assert rows["ASC-00000"]["answer"] == "airport"  # lowercase letter
    assert rows["ER-00000"]["answer"] == "sad"
    assert rows["SAR-00000"]["answer"] == "Mid Career (41-50)"  # Vox: the label text itself
    assert rows["SGR-00000"]["answer"] == "Male" and rows["SGR-00000"]["choices"] == ["Male", "Female"]
    for row in rows.values():  # every row scores 1 for its own answer with the project's scorer
        assert score(row, row["answer"]) == 1.0
        assert row["prompt"] == format_prompt(row["question"], row["choices"])


def test_audiomarathon_categories_and_paths(marathon: Path):
    rows = read_audiomarathon(marathon).rows
    category = {r["task"]: r["category"] for r in rows}
    assert category == {
        "SER": "semantic", "SCR": "semantic", "ASR": "semantic",
        "SED": "acoustic", "MC": "acoustic", "ASC": "acoustic", "ER": "acoustic", "SAR": "acoustic", "SGR": "acoustic",
    }  # fmt: skip
    audio = {r["task"]: r["audio"] for r in rows}
    assert audio["SCR"] == str((marathon / "subsetrace_audio" / "high" / "q0.wav").absolute())
    assert audio["SGR"] == str((marathon / "VoxCeleb/concatenated_audio/wav/id2/b.wav").absolute())
    assert all(Path(r["audio"]).is_absolute() and Path(r["audio"]).is_file() for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)


def test_audiomarathon_vesus_filter_matches_benchmark(marathon: Path):
    rows = [r for r in read_audiomarathon(marathon, ["ER"]).rows]
    assert [r["meta"]["index"] for r in rows] == [0]  # person 2's "happy" clip is left out


def test_audiomarathon_malformed_rows_are_skipped_with_reasons(marathon: Path):
    meta = marathon / "GTZAN" / "concatenated_audio" / "music_genre_classification_meta.json"
    items = json.loads(meta.read_text())
    items += [
        _mc("blues_001.wav", "Genre?", ["Blues", "Rock"], "E"),
        _mc("blues_001.wav", "Genre?", ["Blues", "Rock"], "(B) Jazz"),
        _mc("missing.wav", "Genre?", ["Blues", "Rock"], "A"),
        _mc("blues_001.wav", "", ["Blues", "Rock"], "A"),
        {"path": "blues_001.wav", "question": "Genre?", "answer_gt": "A"},
        "not an object",
    ]
    meta.write_text(json.dumps(items))
    result = read_audiomarathon(marathon, ["MC"])
    assert [r["id"] for r in result.rows] == ["MC-00000"]
    src = "GTZAN/concatenated_audio/music_genre_classification_meta.json"
    assert result.problems == [
        f"{src} row 1: answer 'E' names option E, but the options are ['A', 'B']",
        f"{src} row 2: answer '(B) Jazz' names option B, but option B is 'Rock'",
        f"{src} row 3: audio file not found: {(meta.parent / 'missing.wav').absolute()}",
        f"{src} row 4: missing question ('')",
        f"{src} row 5: missing fields 'choice_a', 'choice_b'",
        f"{src} row 6: expected an object, got str",
    ]


def test_audiomarathon_missing_transcript_is_reported(marathon: Path):
    _audio(marathon / "subsetlibrispeech-long/test-clean/61/70968/61-70968-0002.flac")
    result = read_audiomarathon(marathon, ["ASR"])
    assert len(result.rows) == 2
    assert result.problems == [
        "subsetlibrispeech-long/test-clean/61/70968/61-70968-0002.flac: "
        "no transcript (61-70968-0002.txt, or a line in 61-70968.trans.txt)"
    ]


def test_audiomarathon_task_selection(marathon: Path, caplog):
    assert {r["task"] for r in read_audiomarathon(marathon, ["asr", "SGR"]).rows} == {"ASR", "SGR"}
    (marathon / "GTZAN" / "concatenated_audio" / "music_genre_classification_meta.json").unlink()
    with pytest.raises(BenchmarkError, match="task MC: no music_genre_classification_meta.json under"):
        read_audiomarathon(marathon, ["MC"])
    with caplog.at_level("WARNING", logger="jobs"):
        rows = read_audiomarathon(marathon).rows  # default: absent tasks are skipped with a warning
    assert "MC" not in {r["task"] for r in rows} and "no music_genre_classification_meta.json" in caplog.text
    with pytest.raises(BenchmarkError, match="unknown AudioMarathon task"):
        read_audiomarathon(marathon, ["SD"])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("B", "Jazz"), ("b", "Jazz"), ("(B)", "Jazz"), ("B.", "Jazz"), ("(B) Jazz", "Jazz"), ("B. jazz", "Jazz"),
     ("Jazz", "Jazz"), (" jazz ", "Jazz"), ("A", "A cappella")],
)  # fmt: skip
def test_resolve_answer(answer: str, expected: str):
    assert resolve_answer(answer, [("A", "A cappella"), ("B", "Jazz"), ("C", "Rock")]) == expected


@pytest.mark.parametrize(
    ("answer", "message"),
    [("D", "names option D"), ("(A) Rock", "option A is 'A cappella'"), ("Pop", "not one of the choices"),
     ("", "empty"), (None, "empty")],
)  # fmt: skip
def test_resolve_answer_rejects(answer, message: str):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_answer(answer, [("A", "A cappella"), ("B", "Jazz"), ("C", "Rock")])


def test_resolve_answer_choice_that_is_a_letter_wins():
    # a choice literally named "B" is the answer "B", not option B
    assert resolve_answer("B", [("A", "B"), ("B", "C")]) == "B"


# ---------------------------------------------------------------- MMAU-Pro


def _mmau_item(
    i: int, category: str, answer: str, choices=("cat", "dog", "car"), audio=None, **extra
) -> dict:
    return {
        "id": f"q{i}",
        "audio_path": [f"data/{i}.wav"] if audio is None else audio,
        "question": f"Question {i}?",
        "choices": list(choices) if choices is not None else None,
        "answer": answer,
        "category": category,
        "sub-cat": "counting",
        "task_identifier": None,
        **extra,
    }


@pytest.fixture
def mmau(tmp_path: Path) -> Path:
    """An MMAU-Pro root: test.parquet next to data/<id>.wav, one or two questions per category."""
    root = tmp_path / "MMAU-Pro"
    for i in range(12):
        _audio(root / "data" / f"{i}.wav")
    items = [
        _mmau_item(0, "speech", "dog"),
        _mmau_item(1, "voice_chat", "(C) car"),
        _mmau_item(2, "sound", "Cat", audio=["./data/2.wav"]),
        _mmau_item(3, "music", "dog"),
        _mmau_item(4, "spatial_audio", "car"),
        _mmau_item(5, "sound_music", "cat"),
        _mmau_item(6, "multi", "cat", audio=["data/6.wav", "data/7.wav"]),
        _mmau_item(8, "open", "A long free-form answer.", choices=None),
        _mmau_item(9, "instruction following", "", choices=None),
        _mmau_item(10, "sound", "horse"),  # answer not among the choices
        _mmau_item(11, "music", "cat", audio=["data/404.wav"]),
    ]
    pq.write_table(pa.Table.from_pylist(items), root / "test.parquet")
    return root


def test_mmau_pro_paper_selection(mmau: Path):
    result = read_mmau_pro(mmau)
    rows = _by_id(result.rows)
    assert sorted(rows) == ["q0", "q1", "q2", "q3", "q4"]
    assert rows["q0"] == {
        "audio": str((mmau / "data" / "0.wav").absolute()),
        "id": "q0",
        "task": "speech",
        "category": "semantic",
        "question": "Question 0?",
        "choices": ["cat", "dog", "car"],
        "answer": "dog",
        "prompt": "Question 0? cat or dog or car",
        "meta": {"benchmark": "mmau-pro", "source": "test.parquet", "index": 0, "sub-cat": "counting"},
    }
    assert rows["q1"]["answer"] == "car" and rows["q2"]["answer"] == "cat"
    # "./data/2.wav" resolved against the root
    assert rows["q2"]["audio"] == str((mmau / "data" / "2.wav").absolute())
    assert {r["task"]: r["category"] for r in rows.values()} == {
        "speech": "semantic", "voice_chat": "semantic", "sound": "acoustic", "music": "acoustic",
        "spatial_audio": "acoustic",
    }  # fmt: skip
    assert result.problems == [
        "test.parquet row 9: answer 'horse' is not one of the choices ['cat', 'dog', 'car']",
        f"test.parquet row 10: audio file not found: {(mmau / 'data' / '404.wav').absolute()}",
    ]
    for row in rows.values():
        assert score(row, row["answer"]) == 1.0


def test_mmau_pro_mixed_and_unimportable_categories(mmau: Path):
    rows = read_mmau_pro(mmau, ["sound_music"]).rows
    assert [(r["id"], r["category"]) for r in rows] == [("q5", "mixed")]
    with pytest.raises(BenchmarkError, match="'open' cannot be imported"):
        read_mmau_pro(mmau, ["open"])
    with pytest.raises(BenchmarkError, match="'multi' cannot be imported: several audio files"):
        read_mmau_pro(mmau, ["multi"])
    with pytest.raises(BenchmarkError, match="unknown MMAU-Pro category 'Speech'"):
        read_mmau_pro(mmau, ["Speech"])


def test_mmau_pro_bad_files(tmp_path: Path):
    with pytest.raises(BenchmarkError, match="no MMAU-Pro test.parquet under"):
        read_mmau_pro(tmp_path)
    (tmp_path / "test.parquet").write_text("not parquet")
    with pytest.raises(BenchmarkError, match="test.parquet: not a readable parquet file"):
        read_mmau_pro(tmp_path)
    pq.write_table(pa.Table.from_pylist([{"question": "q", "answer": "a"}]), tmp_path / "test.parquet")
    with pytest.raises(BenchmarkError, match="missing column\\(s\\) audio_path, choices, category"):
        read_mmau_pro(tmp_path)


# ---------------------------------------------------------------- CLI


def test_cli_writes_manifest_the_pipeline_reads(marathon: Path, tmp_path: Path):
    from pipeline.sources import list_sources, make_filesystem

    out = tmp_path / "out" / "am.jsonl"
    assert import_main(["audiomarathon", "--root", str(marathon), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == read_audiomarathon(marathon).rows
    sources = {s.id: s for s in list_sources(str(out), make_filesystem(str(out)))}
    assert sources.keys() == {r["id"] for r in lines}
    ser = sources["SER-00000"]
    assert (ser.uri, ser.question, ser.choices, ser.error) == (
        lines[0]["audio"],
        "Which place is mentioned?",
        ("Paris", "Rome", "Oslo", "Lima"),
        "",
    )


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["audiomarathon", "--root", "{tmp}/nope"], "error: AudioMarathon root {tmp}/nope does not exist"),
        (None, ["mmau-pro", "--root", "{tmp}/nope"], "error: MMAU-Pro root {tmp}/nope does not exist"),
        ("empty", ["audiomarathon", "--root", "{tmp}/root"], "error: no AudioMarathon annotations under {tmp}/root"),
        ("bad-json", ["audiomarathon", "--root", "{tmp}/root"],
         "error: {tmp}/root/race_benchmark.json: not JSON (Expecting value at line 1)"),
        ("desed-list", ["audiomarathon", "--root", "{tmp}/root"],
         'error: {tmp}/root/desed_sound_event_detection_task.json: expected an object with a "tasks" list'),
        ("two-copies", ["audiomarathon", "--root", "{tmp}/root"], "error: task SER: 2 copies of merged_audio_data.json"),
        ("bad-row", ["audiomarathon", "--root", "{tmp}/root", "--strict"],
         "error: 1 row(s) could not be converted (first: gender_id_task_meta.json row 0: audio file not found"),
        ("bad-row", ["audiomarathon", "--root", "{tmp}/root"], "error: no usable audiomarathon rows under {tmp}/root"),
    ],
)  # fmt: skip
def test_cli_one_line_errors(tmp_path: Path, capsys, setup, args, message):
    root = tmp_path / "root"
    if setup:
        root.mkdir()
    if setup == "bad-json":
        (root / "race_benchmark.json").write_text("[not json")
    elif setup == "desed-list":
        _json(root / "desed_sound_event_detection_task.json", [])
    elif setup == "two-copies":
        _json(root / "a" / "merged_audio_data.json", [])
        _json(root / "b" / "merged_audio_data.json", [])
    elif setup == "bad-row":
        _json(root / "gender_id_task_meta.json", [_mc("x.wav", "Gender?", ["male", "female"], "male")])
    out = tmp_path / "m.jsonl"
    argv = [a.format(tmp=tmp_path) for a in args] + ["--out", str(out)]
    assert import_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message.format(tmp=tmp_path)) and "\n" not in err
    assert not out.exists()
