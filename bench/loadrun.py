"""Load run (a benchmark outside `make test`, run by `python -m jobs.loadtest`): many short files, then one very
long archive, through the pipeline.

Checks that a long load run stays healthy and prints the figures: the run completes, memory (the
driver plus every Ray process it started) stays bounded and does not grow with hours processed, throughput in
the last third of each run is not below the first third, and every row is present (one files/ row per source;
the archive's chunks cover it with no gap).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger("bench")
SR = 16000


def _signal(seconds: float, seed: int) -> np.ndarray:
    """Speech-like bursts: a gliding tone with noise, a short quiet gap every ~4 s ([n] float32)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.25 * np.sin(2 * np.pi * (180 + 60 * np.sin(2 * np.pi * 0.3 * t) + seed % 7 * 20) * t)
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 2.5 * t)) + 0.02 * rng.standard_normal(t.size)
    x[(t % 4.0) > 3.7] *= 0.01
    return x.astype(np.float32)


def make_short_files(folder: Path, n: int) -> list[Path]:
    """n WAVs of 1-3 s (reused when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip{i:05d}.wav" for i in range(n)]
    for i, p in enumerate(paths):
        if not p.exists():
            sf.write(p, _signal(1.0 + (i % 5) * 0.5, i), SR, subtype="PCM_16")
    return paths


def make_archive(path: Path, hours: float) -> Path:
    """An Ogg/Opus archive of `hours` (a 10-minute pattern looped by ffmpeg; about 7 MB per hour)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    pattern = path.with_suffix(".pattern.wav")
    sf.write(pattern, _signal(600.0, 1), SR, subtype="PCM_16")
    loops = max(0, int(np.ceil(hours * 6)) - 1)
    tmp = path.with_name(f".{path.name}.tmp.ogg")
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-stream_loop", str(loops), "-i", str(pattern)]
    cmd += ["-t", str(hours * 3600), "-c:a", "libopus", "-b:a", "16k", str(tmp)]
    subprocess.run(cmd, check=True)
    tmp.rename(path)
    pattern.unlink()
    return path


@dataclass
class Sampler:
    """Samples the private resident memory (RssAnon: heap, not the shared object store pages that RSS counts once
    per process mapping them) of this process and all its descendants (Ray's processes) every second."""

    interval_s: float = 1.0
    samples: list = field(
        default_factory=list
    )  # (t, total_mb, max_process_mb, processes): private (RssAnon) memory
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Sampler:
        threading.Thread(target=self._run, daemon=True, name="rss-sampler").start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = _tree_rss_mb(os.getpid())
            self.samples.append((time.monotonic(), sum(rss), max(rss, default=0.0), len(rss)))


def _tree_rss_mb(root: int) -> list[float]:
    parent: dict[int, int] = {}
    rss: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        parent[int(entry)] = int(fields.get("PPid", "0").strip() or 0)
        rss[int(entry)] = float(fields.get("RssAnon", "0 kB").split()[0]) / 1024
    out = []
    for pid in rss:
        p = pid
        while p and p != root:
            p = parent.get(p, 0)
        if p == root:
            out.append(rss[pid])
    return out


class Timeline:
    """Run observer: the arrival time and audio seconds of every chunk row, and the model's time on it."""

    def __init__(self):
        self.rows: list[tuple[float, float]] = []
        self.model_s: list[float] = []

    def observe(self, row: dict) -> None:
        self.rows.append((time.monotonic(), float(row["end_s"] or 0.0) - float(row["start_s"] or 0.0)))
        self.model_s.append(float(row.get("prefill_s") or 0.0) + float(row.get("decode_s") or 0.0))


def thirds(values: list[float]) -> dict:
    """Mean of the first and the last third (a per-row cost that must not grow over the run)."""
    k = len(values) // 3
    if k == 0:
        return {"first_third": None, "last_third": None, "ratio": None}
    first, last = float(np.mean(values[:k])), float(np.mean(values[-k:]))
    return {
        "first_third": round(first, 4),
        "last_third": round(last, 4),
        "ratio": last / first if first else None,
    }


def throughput(rows: list[tuple[float, float]], key: str, windows: int = 9) -> dict:
    """Rows (or audio seconds) per wall second in equal windows of the run; first third vs last third."""
    if len(rows) < windows:
        return {"windows": [], "first_third": None, "last_third": None, "ratio": None}
    t0, t1 = rows[0][0], rows[-1][0]
    span = (t1 - t0) / windows or 1e-9
    per = np.zeros(windows)
    for t, audio in rows:
        per[min(windows - 1, int((t - t0) / span))] += audio if key == "audio_s" else 1
    rate = per / span
    k = windows // 3
    first, last = float(rate[:k].mean()), float(rate[-k:].mean())
    return {"windows": [round(float(r), 3) for r in rate], "first_third": first, "last_third": last,
            "ratio": last / first if first else None}  # fmt: skip


def memory(samples: list, start: float, end: float) -> dict:
    inside = [s for s in samples if start <= s[0] <= end]
    if not inside:
        return {}
    third = max(1, len(inside) // 3)
    return {
        "peak_total_mb": round(max(s[1] for s in inside)),
        "peak_process_mb": round(max(s[2] for s in inside)),
        "peak_first_third_mb": round(max(s[1] for s in inside[:third])),
        "peak_last_third_mb": round(max(s[1] for s in inside[-third:])),
        "processes": max(s[3] for s in inside),
    }


def _phase(name: str, opts, sampler: Sampler, expect_sources: int, key: str) -> dict:
    from pipeline import read_results, run_job

    timeline = Timeline()
    start = time.monotonic()
    summary = run_job(opts, commit_every_s=10.0, observer=timeline)
    end = time.monotonic()
    res = read_results(opts.output)
    files = res.files.to_pylist()
    present = len(files) == expect_sources and all(f["status"] == "ok" for f in files)
    chunks = res.chunks.to_pylist()
    by_id: dict[str, list] = {}
    for c in chunks:
        by_id.setdefault(c["id"], []).append(c)
    contiguous = all(
        [c["chunk_index"] for c in cs] == list(range(len(cs))) and all(a["end_s"] == b["start_s"] for a, b in zip(cs, cs[1:]))
        for cs in by_id.values()
    )  # fmt: skip
    out = {
        "phase": name,
        "sources": expect_sources,
        "files_ok": summary.files_ok,
        "files_failed": summary.files_failed,
        "chunks": len(chunks),
        "audio_hours": round(summary.audio_s / 3600, 3),
        "wall_s": round(end - start, 1),
        "every_row_present": bool(present and contiguous and len(timeline.rows) == len(chunks)),
        "throughput": throughput(timeline.rows, key),
        "model_s_per_chunk": thirds(timeline.model_s),
        "memory": memory(sampler.samples, start, end),
        "errors": summary.errors,
    }
    mem, cost = out["memory"], out["model_s_per_chunk"]
    # Bounded: the last third of the run needs no more memory than the first (plus slack for warm-up), and the
    # model's time per chunk does not grow; wall-clock windows are too lumpy (Ray hands rows over in bundles).
    out["memory_bounded"] = bool(mem) and mem["peak_last_third_mb"] <= 1.25 * mem["peak_first_third_mb"] + 512
    out["no_slowdown"] = cost["ratio"] is None or cost["ratio"] <= 1.25
    log.info("%s: %s", name, json.dumps({k: v for k, v in out.items() if k != "throughput"}))
    return out


@dataclass(frozen=True)
class LoadOptions:
    workdir: str = "/tmp/headrouter-load"
    files: int = 2000  # short files (1-3 s); 0: none
    hours: float = 10.0  # length of the archive; 0: none
    model: str = "tiny-random"
    workers: tuple[int, int] = (1, 2)
    batch_size: int = 16  # chunks per model call for the short files
    archive_batch_size: int = 2  # chunks per model call for the archive
    max_new_tokens: int = 8


def load_run(opts: LoadOptions) -> dict:
    """Generate the inputs (reused when there), run both phases on a fresh embedded Ray, return the figures."""
    import ray

    from pipeline import RunOptions

    work = Path(opts.workdir)
    short = make_short_files(work / "short", opts.files) if opts.files else []
    archive = (
        make_archive(work / "archive" / f"archive-{opts.hours:g}h.ogg", opts.hours) if opts.hours else None
    )
    stamp = time.strftime("%Y%m%dT%H%M%S")
    base = dict(model=opts.model, workers=opts.workers, max_new_tokens=opts.max_new_tokens)
    repo = str(Path(__file__).resolve().parents[1])
    # address="local": always a fresh embedded Ray, never another `ray start` cluster running on the machine
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": repo}})  # fmt: skip
    ray.data.DataContext.get_current().enable_progress_bars = False
    sampler = Sampler().start()
    results = []
    try:
        if short:
            out = str(work / "out" / f"short-{stamp}")
            run = RunOptions(input=str(work / "short"), output=out, batch_size=opts.batch_size, **base)
            results.append(_phase("short_files", run, sampler, len(short), "rows"))
        if archive is not None:
            out = str(work / "out" / f"archive-{stamp}")
            run = RunOptions(input=str(archive), output=out, batch_size=opts.archive_batch_size, **base)
            results.append(_phase("archive", run, sampler, 1, "audio_s"))
    finally:
        sampler.stop()
        ray.shutdown()
    ok = all(r["every_row_present"] and r["memory_bounded"] and r["no_slowdown"] for r in results)
    return {"files": opts.files, "hours": opts.hours, "model": opts.model, "cpus": os.cpu_count(),
            "phases": results, "pass": ok}  # fmt: skip


def format_report(report: dict) -> str:
    """One line per phase with its figures, then PASS/FAIL and the three checks per phase."""
    lines = []
    for r in report["phases"]:
        t, m = r["throughput"], r["memory"]
        lines.append(
            f"{r['phase']:<12} sources {r['files_ok']}/{r['sources']} ok, {r['chunks']} chunks, "
            f"{r['audio_hours']} h audio in {r['wall_s']} s; rows present: {r['every_row_present']}; "
            f"throughput first/last third {t['first_third']}/{t['last_third']} (ratio {t['ratio']}); "
            f"model s/chunk first/last third {r['model_s_per_chunk']['first_third']}/"
            f"{r['model_s_per_chunk']['last_third']}; "
            f"peak private RSS {m.get('peak_total_mb')} MB total (first/last third {m.get('peak_first_third_mb')}/"
            f"{m.get('peak_last_third_mb')} MB, largest process {m.get('peak_process_mb')} MB)"
        )
    checks = ("every_row_present", "memory_bounded", "no_slowdown")
    verdict = {r["phase"]: {k: r[k] for k in checks} for r in report["phases"]}
    lines.append(f"load run: {'PASS' if report['pass'] else 'FAIL'} {verdict}")
    return "\n".join(lines)
