"""The command line of a batch run (`python -m jobs.run`): arguments -> RunOptions, and the end-of-run table."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from headrouter.options import BUDGETS, METHODS, SKIP_SILENCE, PruneOptions
from pipeline.options import RunOptions, RunSummary, UsageError, retain_error

__all__ = ["RunRequest", "format_summary", "parse_run_args", "run_metrics", "workers_range"]


@dataclass(frozen=True)
class RunRequest:
    """What one `jobs.run` command asks for: the run, and the switches that belong to the command."""

    opts: RunOptions
    commit_every_s: float = 10.0
    dry_run: bool = False
    gpu: str = "h100"
    tokens_per_audio_s: float = 3.0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UsageError(message)


def parse_run_args(argv: list[str] | None = None, prog: str = "python -m jobs.run") -> RunRequest:
    """The run's options and the command's own switches from the command line (UsageError on a mistake)."""
    p = _Parser(prog=prog, description="Batch transcription / audio QA with HeadRouter pruning.")
    p.add_argument(
        "--input", required=True, help="local folder, s3://bucket/prefix, or manifest .jsonl/.csv/.parquet"
    )
    p.add_argument("--output", required=True, help="local folder or s3://bucket/prefix")
    p.add_argument("--model", default=RunOptions.model)
    p.add_argument("--method", default=PruneOptions.method)
    p.add_argument(
        "--retain", type=float, default=None, help=f"share of audio tokens kept ({PruneOptions.retain})"
    )
    p.add_argument(
        "--retain-from", default=None, metavar="FILE", help="take retain from jobs.tune's recommendation.json"
    )
    p.add_argument(
        "--shadow-fraction",
        type=float,
        default=0.0,
        help="share of chunks also run unpruned to measure agreement live (0: none; e.g. 0.02)",
    )
    p.add_argument("--layer", type=int, default=PruneOptions.layer, help="pruning layer M (1 .. layers-1)")
    p.add_argument("--profiles", default=None, help="head-weight profile JSON (default: the model's own)")
    p.add_argument(
        "--skip-silence",
        default=PruneOptions.skip_silence,
        choices=SKIP_SILENCE,
        help="remove empty 2-s windows before the audio encoder (Qwen2.5-Omni; docs/method.md)",
    )
    p.add_argument(
        "--budget",
        default=PruneOptions.budget,
        choices=BUDGETS,
        help="kept tokens per chunk: fixed (retain of each) or adaptive (from its own scores, retain on average; "
        "needs python -m jobs.calibrate_budget)",
    )
    p.add_argument("--task", default="asr", choices=["asr", "qa"])
    p.add_argument("--question", default=None)
    p.add_argument("--workers", default="1..2", type=workers_range, help="actor pool size MIN..MAX (or N)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--cpus-per-worker", type=float, default=0.5)
    p.add_argument(
        "--batch-size",
        type=int,
        default=RunOptions.batch_size,
        help="chunks per actor batch and per generate call",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="most KV tokens per generate call, per layer on average: the call's size x (its longest input for "
        "layers < M, its longest kept input for layers >= M, plus the new tokens) (default: no limit)",
    )
    p.add_argument("--max-new-tokens", type=int, default=RunOptions.max_new_tokens)
    p.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="run the decode step eagerly on CUDA (for debugging; same tokens)",
    )
    p.add_argument(
        "--slots",
        type=int,
        default=RunOptions.slots,
        help="continuous batching over this many decode slots per actor: a finished chunk hands its slot to "
        "the next (0: static generate calls; actor batches become at least 4 x slots chunks)",
    )
    p.add_argument("--max-error-fraction", type=float, default=0.1)
    p.add_argument(
        "--retry-errors", action="store_true", help="reprocess sources that failed in earlier runs"
    )
    p.add_argument("--window-s", type=float, default=None, help="cap chunk length below the model window")
    p.add_argument("--max-duration-s", type=float, default=12 * 3600.0)
    p.add_argument("--decode-timeout-s", type=float, default=3600.0)
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL (credentials: AWS chain)")
    p.add_argument(
        "--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)"
    )
    p.add_argument("--run-id", default=None)
    p.add_argument("--commit-every-s", type=float, default=10.0, help="seconds between Parquet commits")
    # Monitoring (monitoring/): a /metrics port, a Pushgateway for the run's totals, the job label.
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument(
        "--metrics-addr", default="127.0.0.1", help="address for --metrics-port (0.0.0.0 in a pod)"
    )
    p.add_argument("--pushgateway", default=None)
    p.add_argument("--job-name", default="headrouter-batch")
    # --dry-run: list the archive, read durations from headers, estimate GPU-hours; no compute, nothing written
    p.add_argument("--dry-run", action="store_true", help="print the archive's size and estimated GPU-hours")
    p.add_argument("--gpu", default="h100", help="GPU type for --dry-run's estimate (bench.cost.GPUS)")
    p.add_argument(
        "--tokens-per-audio-s", type=float, default=3.0, help="ASR output rate for --dry-run (3 per second)"
    )
    a = p.parse_args(argv)
    opts = RunOptions(
        input=a.input,
        output=a.output,
        model=a.model,
        prune=prune_options(a),
        task=a.task,
        question=a.question,
        workers=a.workers,
        gpus_per_worker=a.gpus_per_worker,
        cpus_per_worker=a.cpus_per_worker,
        batch_size=a.batch_size,
        max_batch_tokens=a.max_batch_tokens,
        shadow_fraction=a.shadow_fraction,
        cuda_graphs=a.cuda_graphs,
        slots=a.slots,
        max_new_tokens=a.max_new_tokens,
        max_error_fraction=a.max_error_fraction,
        retry_errors=a.retry_errors,
        window_s=a.window_s,
        max_duration_s=a.max_duration_s,
        decode_timeout_s=a.decode_timeout_s,
        s3_endpoint=a.s3_endpoint,
        address=a.address,
        run_id=a.run_id,
        metrics_port=a.metrics_port,
        metrics_addr=a.metrics_addr,
        pushgateway=a.pushgateway,
        job_name=a.job_name,
    )
    return RunRequest(opts.validate(), a.commit_every_s, a.dry_run, a.gpu, a.tokens_per_audio_s)


def prune_options(a: argparse.Namespace) -> PruneOptions:
    """The run's one PruneOptions, from the pruning flags (a mistake is a UsageError naming its flag)."""
    retain = PruneOptions.retain if a.retain is None else a.retain
    if a.retain_from is not None:
        if a.retain is not None:
            raise UsageError("give --retain or --retain-from, not both")
        from pipeline.tune import recommended_retain

        retain = recommended_retain(a.retain_from, a.model, a.method, a.budget)
    if a.method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, got {a.method!r}")
    if not 0.0 < retain <= 1.0:
        raise UsageError(retain_error(retain))
    if a.layer < 1:
        raise UsageError(f"--layer must be >= 1 (pruning at layer 0 is not supported), got {a.layer}")
    return PruneOptions(
        method=a.method,
        retain=retain,
        layer=a.layer,
        profiles=a.profiles,
        skip_silence=a.skip_silence,
        budget=a.budget,
    )


def workers_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("..")
    try:
        return (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN..MAX or N, got {text!r}") from None


def format_summary(s: RunSummary) -> str:
    """The short end-of-run table."""

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    kept = (
        f"{s.kept_tokens}/{s.audio_tokens} ({s.kept_tokens / s.audio_tokens:.0%})" if s.audio_tokens else "-"
    )
    rows = [
        ("run", s.run_id),
        (
            "files ok / failed",
            f"{s.files_ok} / {s.files_failed}"
            + (f"  ({s.files_skipped} done earlier)" if s.files_skipped else ""),
        ),
        ("errors", ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "-"),
        ("audio hours", f"{s.audio_s / 3600:.3f}"),
        ("wall time", f"{s.wall_s:.1f} s"),
        ("real-time factor", f(s.rtf, ".3f")),
        ("tokens kept", kept),
        (
            "mean alpha sem/uni/aco",
            " / ".join(f(a, ".3f") for a in (s.alpha_semantic, s.alpha_uniform, s.alpha_acoustic)),
        ),
        ("shadow agreement", _agreement(s)),
        ("call time", _shares(s)),
        ("output", s.output),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _shares(s: RunSummary) -> str:
    """Where the model calls' wall time went: host-side preparation, prefill, decode steps."""
    shares = s.call_shares
    if shares is None:
        return "-"
    parts = " / ".join(f"{shares[k]:.0%}" for k in ("prepare", "prefill", "decode"))
    return f"{parts} prepare / prefill / decode ({s.prepare_s + s.prefill_s + s.decode_s:.1f} s)"


def _agreement(s: RunSummary) -> str:
    """Mean pruned-vs-unpruned agreement of the shadowed chunks with its 95% interval."""
    if not s.shadow_agreement:
        return "-"
    mean, lo, hi = s.shadow_agreement
    return f"{mean:.3f} (95% CI {lo:.3f}-{hi:.3f}, {s.shadow_chunks} chunks)"


def run_metrics(opts: RunOptions):
    """monitoring/'s RunMetrics when --metrics-port or --pushgateway is given, else None."""
    if opts.metrics_port is None and opts.pushgateway is None:
        return None
    import monitoring

    if opts.metrics_port is not None:
        monitoring.serve(opts.metrics_port, addr=opts.metrics_addr)
    rm = monitoring.RunMetrics(
        opts.job_name, opts.run_id, opts.model, opts.prune.method, opts.task, gateway=opts.pushgateway
    )
    rm.start()
    return rm
