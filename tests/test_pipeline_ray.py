"""The whole pipeline on a real local Ray (shared head): bad inputs, long files, resume, grown archive, retries."""

from __future__ import annotations

import shutil

import duckdb
import pytest

from pipeline import RunOptions, read_results, run_job
from tests.fixtures.audio import write_bursts

pytestmark = pytest.mark.slow

BAD = {  # hostile file kind -> error_kind of its one files/ row
    "empty": "empty",
    "header_only": "empty",
    "random_bytes": "decode_error",
    "text_as_mp3": "decode_error",
    "nan": "invalid_samples",
    "silent": "silent",
    "too_short": "invalid_audio",
    "truncated_m4a": "decode_error",
}


class Rows:
    def __init__(self):
        self.rows = []

    def observe(self, row):
        self.rows.append(row)


def sql_one(query: str):
    with duckdb.connect() as con:
        return con.execute(query).fetchone()[0]


def parts(root, kind):
    return sorted(p.name for p in (root / kind).rglob("*.parquet"))


def test_bad_inputs_long_file_resume_growth_and_retry(ray_local, audio_archive, hostile_audio, tmp_path):
    bad = audio_archive / "bad"
    bad.mkdir()
    names = {kind: shutil.copy(path, bad / path.name) for kind, path in hostile_audio.items()}
    vanishing = shutil.copy(audio_archive / "news.mp3", bad / "vanishing.mp3")
    write_bursts(audio_archive / "long.wav", 95.0, sr=8000, gap_every_s=4.0)
    out = tmp_path / "out"
    opts = RunOptions(input=str(audio_archive), output=str(out), window_s=10.0, workers=(1, 2), batch_size=2)
    observer = Rows()

    def vanish(run_id):  # listed, then deleted before any decode task reads it
        shutil.move(vanishing, tmp_path / "vanished.mp3")

    s1 = run_job(opts, commit_every_s=1.0, on_start=vanish, observer=observer)

    listed = 5 + len(BAD) + 2
    assert (s1.files_listed, s1.files_ok, s1.files_failed) == (listed, 6, len(BAD) + 1)
    assert s1.exit_code == 1  # 9 of 15 failed > --max-error-fraction 0.1
    res = read_results(str(out))
    files = {r["id"]: r for r in res.files.to_pylist()}
    assert len(files) == res.files.num_rows == listed
    for kind, want in BAD.items():
        row = files[str(names[kind])]
        assert row["status"] == "error" and row["error_kind"] == want, (kind, row["error"])
        assert row["error"].startswith(want + ": ") and "\n" not in row["error"]
    assert files[str(vanishing)]["error_kind"] == "not_found"
    assert s1.errors == {"decode_error": 3, "empty": 2, "invalid_samples": 1, "silent": 1, "invalid_audio": 1,
                         "not_found": 1}  # fmt: skip

    # Every good source: ordered chunks of <= 10 s covering it without a gap; the 95 s file cut in its gaps.
    chunks = res.chunks.to_pylist()
    for sid, f in files.items():
        if f["status"] != "ok":
            continue
        mine = [c for c in chunks if c["id"] == sid]
        assert [c["chunk_index"] for c in mine] == list(range(f["num_chunks"])) and f["num_chunks"] >= 1
        assert mine[0]["start_s"] == 0 and abs(mine[-1]["end_s"] - f["duration_s"]) < 1e-9
        assert all(a["end_s"] == b["start_s"] for a, b in zip(mine, mine[1:]))
        assert all(c["end_s"] - c["start_s"] <= 10.0 and c["status"] == "ok" for c in mine)
        assert all(c["kept_tokens"] == int(c["audio_tokens"] * 0.6) for c in mine)
    assert files[str(audio_archive / "long.wav")]["num_chunks"] >= 10
    assert abs(files[str(audio_archive / "long.wav")]["duration_s"] - 95.0) < 0.01
    assert len(observer.rows) == len(chunks)  # the driver-side metrics hook saw every chunk row once
    assert sql_one(f"select count(*) from read_parquet('{out}/files/**/*.parquet')") == listed

    # Same command again (the vanished file is no longer listed): nothing to do, nothing written twice.
    before = (parts(out, "files"), parts(out, "chunks"))
    s2 = run_job(opts)
    assert (s2.files_listed, s2.files_skipped, s2.files_ok, s2.files_failed) == (listed - 1, listed - 1, 0, 0)
    assert (parts(out, "files"), parts(out, "chunks")) == before

    # A grown archive: only the new file is processed.
    shutil.copy(audio_archive / "weather.m4a", audio_archive / "weather-2.m4a")
    s3 = run_job(opts)
    assert (s3.files_skipped, s3.files_ok, s3.files_failed) == (listed - 1, 1, 0)

    # --retry-errors: the failed sources run again; the one that came back now succeeds; each id still once.
    shutil.move(tmp_path / "vanished.mp3", vanishing)
    s4 = run_job(opts.replace(retry_errors=True, max_error_fraction=1.0))
    assert (s4.files_skipped, s4.files_ok, s4.files_failed) == (listed + 1 - 9, 1, 8)
    assert s4.exit_code == 0
    res = read_results(str(out))
    files = {r["id"]: r for r in res.files.to_pylist()}
    assert res.files.num_rows == len(files) == listed + 1
    assert files[str(vanishing)]["status"] == "ok" and files[str(vanishing)]["run_id"] == s4.run_id
    assert {r["run_id"] for r in res.chunks.to_pylist() if r["id"] == str(vanishing)} == {s4.run_id}
    raw = sql_one(f"select count(*) from read_parquet('{out}/files/**/*.parquet')")
    assert raw == listed + 1 + 9  # the superseded error rows stay on disk; the reading rule hides them
