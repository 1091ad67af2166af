"""A self-contained HTML report of a pipeline output, from its Parquet alone (`python -m jobs.report`).

Plots (inline PNG): throughput over the run, latency distribution, tokens kept vs retain, routing coefficients per
task (the paper's Figure 7). No scripts and no external resources: the page opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NoChunks", "ReportInfo", "render", "summary", "write_report"]

log = logging.getLogger("monitoring")

PROFILES = ("semantic", "uniform", "acoustic")
COLORS = {"semantic": "#4C72B0", "uniform": "#8C8C8C", "acoustic": "#DD8452"}


class NoChunks(LookupError):
    """The output holds no chunk rows (wrong path, or nothing committed yet)."""


@dataclass(frozen=True)
class ReportInfo:
    path: Path  # the HTML file written
    chunks: int
    sources: int


def write_report(output: str, out: str | Path | None = None, s3_endpoint: str | None = None) -> ReportInfo:
    """Read OUTPUT's chunks/ and files/ tables and write the page to `out`.

    `out` defaults to OUTPUT/report.html, or ./report.html when OUTPUT is on S3. Raises NoChunks when there are no
    chunk rows to report on.
    """
    chunks = _read(output, "chunks", s3_endpoint)
    if not chunks:
        raise NoChunks(f"no chunk rows under {output}/chunks")
    files = _read(output, "files", s3_endpoint)
    path = Path(out or ("report.html" if output.startswith("s3://") else Path(output) / "report.html"))
    path.write_text(render(output, chunks, files), encoding="utf-8")
    return ReportInfo(path, len(chunks), len(files))


def _read(output: str, table: str, s3_endpoint: str | None) -> list[dict]:
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    if output.startswith("s3://"):
        fs = pafs.S3FileSystem(endpoint_override=s3_endpoint) if s3_endpoint else pafs.S3FileSystem()
        path = output.removeprefix("s3://").rstrip("/") + f"/{table}"
    else:
        fs, path = pafs.LocalFileSystem(), str(Path(output).resolve() / table)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return []
    # Skip hidden and temporary files the sink may leave while writing.
    data = ds.dataset(
        path, filesystem=fs, format="parquet", exclude_invalid_files=True, ignore_prefixes=[".", "_"]
    )
    return data.to_table().to_pylist()


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _num(v) -> float | None:
    try:
        out = float(v)
    except (TypeError, ValueError):
        return None
    return out if out == out and abs(out) != float("inf") else None


def _figure(title: str, ylabel: str, xlabel: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _empty(ax, text="no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_throughput(files: list[dict], chunks: list[dict]) -> str:
    """Cumulative audio hours committed against wall time, per run (files/ commit times)."""
    fig, ax = _figure(
        "Throughput over the run", "audio hours processed", "minutes since the run's first commit"
    )
    runs: dict[str, list[tuple]] = {}
    for f in files:
        if f.get("committed_at") is not None and f.get("status") == "ok":
            runs.setdefault(f.get("run_id") or "?", []).append(
                (f["committed_at"], _num(f.get("duration_s")) or 0.0)
            )
    for run_id, points in sorted(runs.items()):
        points.sort(key=lambda p: p[0])
        t0 = points[0][0]
        xs = [(t - t0).total_seconds() / 60 for t, _ in points]
        total, ys = 0.0, []
        for _, d in points:
            total += d / 3600
            ys.append(total)
        ax.step(xs, ys, where="post", marker="o", ms=3, label=run_id)
    if runs:
        ax.legend(fontsize=7, title="run", title_fontsize=7)
    else:  # no commit times: audio against model compute time, in chunk order
        ok = [c for c in chunks if c.get("status") == "ok"]
        xs, ys, t, a = [], [], 0.0, 0.0
        for c in ok:
            t += sum(_num(c.get(k)) or 0 for k in ("prepare_s", "prefill_s", "decode_s"))
            a += max(0.0, (_num(c.get("end_s")) or 0) - (_num(c.get("start_s")) or 0)) / 3600
            xs.append(t / 60)
            ys.append(a)
        if xs:
            ax.plot(xs, ys)
            ax.set_xlabel("minutes of model compute")
        else:
            _empty(ax)
    return _png(fig)


def plot_latency(chunks: list[dict]) -> str:
    fig, ax = _figure("Latency per chunk", "chunks", "seconds")
    series = {
        "prefill": [_num(c.get("prefill_s")) for c in chunks],
        "decode": [_num(c.get("decode_s")) for c in chunks],
    }
    series["prefill + decode"] = [
        p + d if p is not None and d is not None else None
        for p, d in zip(series["prefill"], series["decode"])
    ]
    series = {k: [v for v in vs if v is not None] for k, vs in series.items()}
    everything = [v for vs in series.values() for v in vs]
    if everything:
        import numpy as np

        bins = np.histogram_bin_edges(everything, bins=30)  # shared, so the three are comparable
        for label, values in series.items():
            ax.hist(values, bins=bins, alpha=0.5, label=label)
        ax.legend(fontsize=8)
    else:
        _empty(ax)
    return _png(fig)


def plot_kept(chunks: list[dict]) -> str:
    fig, ax = _figure("Audio tokens kept vs retain", "kept / audio tokens", "retain")
    by_method: dict[str, tuple[list, list]] = {}
    for c in chunks:
        n, k, r = _num(c.get("audio_tokens")), _num(c.get("kept_tokens")), _num(c.get("retain"))
        if n and k is not None and r is not None:
            xs, ys = by_method.setdefault(c.get("method") or "?", ([], []))
            xs.append(r)
            ys.append(k / n)
    for method, (xs, ys) in sorted(by_method.items()):
        ax.scatter(xs, ys, s=12, alpha=0.6, label=method)
    if by_method:
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="kept = retain")
        ax.set_xlim(0, 1.05)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
    else:
        _empty(ax)
    return _png(fig)


def plot_routing(chunks: list[dict]) -> str:
    """Mean routing coefficient per profile for each task, with the spread across chunks (Figure 7)."""
    import numpy as np

    fig, ax = _figure("Routing coefficients per task", "routing coefficient", "task")
    tasks = sorted({c.get("task") or "?" for c in chunks if _num(c.get("alpha_semantic")) is not None})
    if not tasks:
        _empty(ax, "no routing coefficients (vanilla or baseline methods)")
        return _png(fig)
    width = 0.8 / len(PROFILES)
    for j, profile in enumerate(PROFILES):
        means, stds = [], []
        for task in tasks:
            vals = [
                v
                for c in chunks
                if (c.get("task") or "?") == task and (v := _num(c.get(f"alpha_{profile}"))) is not None
            ]
            means.append(float(np.mean(vals)) if vals else 0.0)
            stds.append(float(np.std(vals)) if vals else 0.0)
        xs = np.arange(len(tasks)) + (j - 1) * width
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=profile, color=COLORS[profile])
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return _png(fig)


def summary(chunks: list[dict], files: list[dict]) -> list[tuple[str, str]]:
    ok = [c for c in chunks if c.get("status") == "ok"]
    audio_s = sum(max(0.0, (_num(c.get("end_s")) or 0) - (_num(c.get("start_s")) or 0)) for c in ok)
    tokens = sum(_num(c.get("audio_tokens")) or 0 for c in ok)
    kept = sum(_num(c.get("kept_tokens")) or 0 for c in ok)
    kv_full = sum(_num(c.get("kv_bytes_full")) or 0 for c in ok)
    kv_kept = sum(_num(c.get("kv_bytes_kept")) or 0 for c in ok)
    skipped = sum(_num(c.get("skipped_s")) or 0 for c in ok)
    kinds = Counter((c.get("error") or "").split(":", 1)[0] or "?" for c in chunks if c.get("status") != "ok")
    rows = [
        ("runs", str(len({c.get("run_id") for c in chunks}))),
        (
            "sources ok / failed",
            f"{sum(f.get('status') == 'ok' for f in files)} / {sum(f.get('status') != 'ok' for f in files)}"
            if files
            else "n/a",
        ),
        ("chunks ok / error", f"{len(ok)} / {len(chunks) - len(ok)}"),
        ("audio processed", f"{audio_s / 3600:.3f} h"),
        (
            "audio skipped before the encoder",
            f"{skipped / 3600:.3f} h ({100 * skipped / audio_s:.1f} %)" if audio_s else "n/a",
        ),
        ("audio tokens kept", f"{100 * kept / tokens:.1f} %" if tokens else "n/a"),
        ("audio tokens kept per task", _kept_per_task(ok)),
        (
            "KV cache saved",
            f"{100 * (1 - kv_kept / kv_full):.1f} % ({(kv_full - kv_kept) / 2**20:.1f} MiB)"
            if kv_full
            else "n/a",
        ),
        (
            "models / methods",
            ", ".join(sorted({f"{c.get('model')}/{c.get('method')}" + _budget(c) for c in chunks})) or "n/a",
        ),
        ("errors by kind", ", ".join(f"{k}: {n}" for k, n in kinds.most_common()) or "none"),
        ("shadow agreement (pruned vs unpruned)", _shadow_agreement(ok)),
        ("model-call time: preparation / prefill / decode", _call_shares(ok)),
    ]
    return rows


def call_shares(ok: list[dict]) -> dict | None:
    """Shares of the ok chunks' model-call wall time: {"prepare", "prefill", "decode"} summing to 1 (None: none)."""
    totals = {k: sum(_num(c.get(f"{k}_s")) or 0.0 for c in ok) for k in ("prepare", "prefill", "decode")}
    whole = sum(totals.values())
    return {k: v / whole for k, v in totals.items()} if whole > 0 else None


def _call_shares(ok: list[dict]) -> str:
    shares = call_shares(ok)
    if shares is None:
        return "n/a"
    return " / ".join(f"{100 * shares[k]:.1f} %" for k in ("prepare", "prefill", "decode"))


def _budget(chunk: dict) -> str:
    return f" ({chunk['budget']} budget)" if chunk.get("budget") not in (None, "", "fixed") else ""


def _kept_per_task(ok: list[dict]) -> str:
    """Realized share of audio tokens kept per task (an adaptive budget spends differently per task)."""
    sums: dict[str, list[float]] = {}
    for c in ok:
        n, k = _num(c.get("audio_tokens")), _num(c.get("kept_tokens"))
        if n and k is not None and c.get("task"):
            pair = sums.setdefault(str(c["task"]), [0.0, 0.0])
            pair[0], pair[1] = pair[0] + k, pair[1] + n
    return ", ".join(f"{t} {100 * k / n:.1f} %" for t, (k, n) in sorted(sums.items())) or "n/a"


def _shadow_agreement(ok: list[dict]) -> str:
    """Mean agreement of the shadowed chunks with a bootstrap 95% interval, per retain when several."""
    from quality.agreement import mean_interval

    by_retain: dict = {}
    for c in ok:
        if (a := _num(c.get("shadow_agreement"))) is not None:
            by_retain.setdefault(_num(c.get("retain")), []).append(a)
    if not by_retain:
        return "n/a (no shadowed chunks; jobs.run --shadow-fraction)"
    parts = []
    for retain, values in sorted(by_retain.items(), key=lambda kv: -(kv[0] or 0)):
        mean, lo, hi = mean_interval(values)
        where = f"retain {retain:g}: " if len(by_retain) > 1 and retain is not None else ""
        parts.append(f"{where}{mean:.3f} (95% CI {lo:.3f}-{hi:.3f}, {len(values)} chunks)")
    return "; ".join(parts)


def render(output: str, chunks: list[dict], files: list[dict]) -> str:
    """The report page as one HTML string."""
    import matplotlib

    matplotlib.use("Agg")
    plots = [
        ("Throughput over the run", plot_throughput(files, chunks)),
        ("Latency distribution", plot_latency(chunks)),
        ("Tokens kept vs retain", plot_kept(chunks)),
        ("Routing coefficients per task (paper Figure 7)", plot_routing(chunks)),
    ]
    table = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary(chunks, files)
    )
    figures = "\n".join(
        f'<figure><img alt="{html.escape(t)}" src="{src}"><figcaption>{html.escape(t)}</figcaption></figure>'
        for t, src in plots
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>HeadRouter run report: {html.escape(output)}</title>
<link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1rem; }}
th, td {{ text-align: left; padding: 0.2rem 0.8rem; border-bottom: 1px solid #ddd; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 1rem; }}
figure {{ margin: 0; }} img {{ max-width: 100%; }}
</style></head>
<body>
<h1>HeadRouter run report</h1>
<p>Output: <code>{html.escape(output)}</code></p>
<table>{table}</table>
<div class="grid">{figures}</div>
</body></html>
"""
