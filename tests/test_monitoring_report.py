"""monitoring.report and `python -m jobs.report`: a self-contained HTML page from Parquet alone, rendered in headless
Chromium."""

import base64
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _write_output(root: Path, with_routing=True) -> None:
    chunks, files = [], []
    t0 = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
    for i in range(12):
        task = "asr" if i % 2 else "qa"
        ok = i != 5
        retain = 0.6 if i < 8 else 0.3
        chunks.append(
            dict(
                run_id="run-1",
                source=f"/a/{i}.wav",
                chunk_index=0,
                start_s=0.0,
                end_s=30.0,
                status="ok" if ok else "error",
                error="" if ok else "decode_error: bad header",
                task=task,
                text="hello",
                model="tiny-random",
                method="headrouter",
                retain=retain,
                audio_tokens=750 if ok else None,
                kept_tokens=int(750 * retain) if ok else None,
                alpha_semantic=(0.6 if task == "qa" else 0.2) if ok and with_routing else None,
                alpha_uniform=0.2 if ok and with_routing else None,
                alpha_acoustic=(0.2 if task == "qa" else 0.6) if ok and with_routing else None,
                prefill_s=0.1 + 0.01 * i if ok else None,
                decode_s=0.5 + 0.02 * i if ok else None,
                prepare_s=0.05 if ok else None,
                kv_bytes_full=10_000 if ok else None,
                kv_bytes_kept=int(10_000 * retain) if ok else None,
            )
        )
        files.append(
            dict(
                run_id="run-1",
                source=f"/a/{i}.wav",
                status="ok" if ok else "error",
                duration_s=30.0,
                committed_at=t0 + timedelta(seconds=20 * i),
            )
        )
    (root / "chunks").mkdir(parents=True)
    (root / "files").mkdir()
    pq.write_table(pa.Table.from_pylist(chunks), root / "chunks" / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(files), root / "files" / "part-0.parquet")


def _report(out: Path) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "jobs.report", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    return (out / "report.html").read_text()


def _chromium(page: Path, shot: Path, profile: Path) -> list[str]:
    """Render page headless, save a screenshot; return the console messages Chromium logged."""
    argv = [
        shutil.which("chromium"),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,1600",
        f"--screenshot={shot}",
        page.as_uri(),
    ]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.read_bytes().startswith(PNG), res.stderr[-2000:]
    return [line for line in res.stderr.splitlines() if ":CONSOLE" in line]


def test_report_is_self_contained_with_four_plots(tmp_path):
    _write_output(tmp_path / "out")
    page = _report(tmp_path / "out")
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4
    assert all(base64.b64decode(img).startswith(PNG) for img in images)
    assert not re.search(r'(src|href)="(https?:)?//', page), (
        "the page must not load anything from the network"
    )
    assert "<script" not in page
    assert "11 / 1" in page  # chunks ok / error
    assert "decode_error: 1" in page
    assert "KV cache saved" in page and "n/a" not in page.split("KV cache saved")[1][:40]


def test_report_shows_the_share_of_model_call_time(tmp_path):
    from monitoring.report import call_shares, summary

    _write_output(tmp_path / "out")
    chunks = pq.read_table(tmp_path / "out" / "chunks").to_pylist()
    ok = [c for c in chunks if c["status"] == "ok"]
    shares = call_shares(ok)
    assert sum(shares.values()) == pytest.approx(1.0)
    total = sum(c["prepare_s"] + c["prefill_s"] + c["decode_s"] for c in ok)
    assert shares["prepare"] == pytest.approx(0.05 * len(ok) / total)
    assert shares["prefill"] == pytest.approx(sum(c["prefill_s"] for c in ok) / total)
    row = dict(summary(chunks, []))["model-call time: preparation / prefill / decode"]
    assert row == " / ".join(f"{100 * shares[k]:.1f} %" for k in ("prepare", "prefill", "decode"))
    assert row in _report(tmp_path / "out")
    assert call_shares([]) is None


def test_report_without_routing_or_commit_times_still_renders(tmp_path):
    _write_output(tmp_path / "out", with_routing=False)
    shutil.rmtree(tmp_path / "out" / "files")
    page = _report(tmp_path / "out")
    assert len(re.findall(r"data:image/png;base64,", page)) == 4


def test_missing_output_is_a_one_line_error(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "jobs.report", str(tmp_path / "nothing")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "no chunk rows" in res.stderr and "Traceback" not in res.stderr


def test_write_report_library_call(tmp_path):
    from monitoring.report import NoChunks, write_report

    _write_output(tmp_path / "out")
    info = write_report(str(tmp_path / "out"), out=tmp_path / "page.html")
    assert (info.path, info.chunks, info.sources) == (tmp_path / "page.html", 12, 12)
    assert info.path.read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(NoChunks, match="no chunk rows"):
        write_report(str(tmp_path / "nothing"))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium missing")
def test_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    # The console capture must see errors, or an empty list proves nothing.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom'); missing();</script></body></html>")
    assert _chromium(bad, tmp_path / "bad.png", tmp_path / "profile-bad")

    _write_output(tmp_path / "out")
    _report(tmp_path / "out")
    shot = REPO / "out" / "test-artifacts" / "report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    assert _chromium(tmp_path / "out" / "report.html", shot, tmp_path / "profile") == []
    assert shot.stat().st_size > 20_000  # a page with plots, not a blank one


def test_summary_shows_shadow_agreement_with_an_interval_per_retain():
    from monitoring.report import summary

    def row(retain, agreement):
        return dict(status="ok", retain=retain, shadow_agreement=agreement, start_s=0.0, end_s=1.0)

    rows = dict(summary([row(0.4, 1.0), row(0.4, 0.5), row(0.4, None)], []))
    assert rows["shadow agreement (pruned vs unpruned)"].startswith("0.750 (95% CI 0.500-1.000, 2 chunks)")
    rows = dict(summary([row(0.4, 1.0), row(0.6, 1.0)], []))
    assert rows["shadow agreement (pruned vs unpruned)"] == (
        "retain 0.6: 1.000 (95% CI 1.000-1.000, 1 chunks); retain 0.4: 1.000 (95% CI 1.000-1.000, 1 chunks)"
    )
    assert dict(summary([row(0.4, None)], []))["shadow agreement (pruned vs unpruned)"].startswith("n/a")


def test_run_summary_shows_the_share_of_model_call_time(tmp_path):
    from pipeline.cli import format_summary
    from pipeline.options import RunOptions
    from pipeline.runner import _summary

    base = dict(num_chunks=1, duration_s=30.0, audio_tokens=750, kept_tokens=450, error_kind="")
    rows = [
        dict(base, status="ok", prepare_s=0.5, prefill_s=1.0, decode_s=3.5),
        dict(base, status="ok", prepare_s=0.5, prefill_s=2.0, decode_s=2.5),
        dict(base, status="error", error_kind="decode_error", prepare_s=None, prefill_s=None, decode_s=None),
    ]
    opts = RunOptions(input=str(tmp_path), output=str(tmp_path / "out"))
    s = _summary("r", opts, rows, 3, 0, [], 20.0)
    assert (s.prepare_s, s.prefill_s, s.decode_s) == (1.0, 3.0, 6.0)
    assert s.call_shares == pytest.approx({"prepare": 0.1, "prefill": 0.3, "decode": 0.6})
    assert sum(s.to_dict()["call_shares"].values()) == pytest.approx(1.0)
    (line,) = [x for x in format_summary(s).splitlines() if x.startswith("call time ")]
    assert line.split(None, 2)[2] == "10% / 30% / 60% prepare / prefill / decode (10.0 s)"
    assert _summary("r", opts, rows[2:], 1, 0, [], 1.0).call_shares is None
