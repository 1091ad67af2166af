"""Run options (in) and run summary (out) of the batch pipeline."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from headrouter.options import PruneOptions
from workers.options import WorkerOptions

TASKS = ("asr", "qa")


class UsageError(ValueError):
    """A mistake in the user's request (bad flag, missing input): reported in one line, exit code 2."""


class RunFailed(RuntimeError):
    """The run could not proceed (unreachable input/output, model failed to load): exit code 3."""


@dataclass(frozen=True)
class RunOptions:
    """One batch run. `prune` is the one PruneOptions of the run: built once (by the command line, or by the
    caller), handed to the inference actors inside their WorkerOptions and from there to every `generate` call,
    never copied field by field. The serving settings' defaults are WorkerOptions' own."""

    input: str
    output: str
    model: str = WorkerOptions.model
    prune: PruneOptions = field(default_factory=PruneOptions)
    task: str = "asr"
    question: str | None = None
    workers: tuple[int, int] = (1, 2)
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 0.5
    batch_size: int = WorkerOptions.batch_size  # chunks per Ray batch, and most chunks in one generate call
    max_batch_tokens: int | None = None  # most KV tokens in one generate call (LALM.kv_tokens)
    shadow_fraction: float = 0.0  # share of chunks also run unpruned to measure agreement (workers.shadow)
    cuda_graphs: bool = WorkerOptions.cuda_graphs  # capture the decode step on CUDA (--no-cuda-graphs: eager)
    slots: int = WorkerOptions.slots  # continuous batching over this many decode slots (0: static calls)
    max_new_tokens: int = WorkerOptions.max_new_tokens
    max_error_fraction: float = 0.1
    retry_errors: bool = False
    s3_endpoint: str | None = None
    address: str | None = None
    run_id: str | None = None
    window_s: float | None = None  # cap on chunk length; None: the model's window
    max_duration_s: float = 12 * 3600.0  # per source; longer sources become error rows
    decode_timeout_s: float = 3600.0  # wall time for decoding one source
    max_input_bytes: int = 8 << 30  # per source
    device: str = WorkerOptions.device
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"  # 0.0.0.0 in a container so Prometheus can scrape the pod
    pushgateway: str | None = None
    job_name: str = "headrouter-batch"
    progress_s: float = 5.0

    def validate(self) -> RunOptions:
        """Raise UsageError for values no run could use; return self."""
        if self.task not in TASKS:
            raise UsageError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "qa" and not self.question and not _looks_like_manifest(self.input):
            raise UsageError("--task qa needs --question (or a manifest with a 'question' column)")
        # PruneOptions checked its own fields when it was built; a run asks for more than that
        if not isinstance(self.prune, PruneOptions):
            raise UsageError(f"prune must be a PruneOptions, got {type(self.prune).__name__}")
        if self.prune.method == "headrouter-oracle":
            raise UsageError(
                "--method headrouter-oracle needs each clip's true category: evaluation only (jobs.eval)"
            )
        if not 0.0 < self.prune.retain <= 1.0:
            raise UsageError(retain_error(self.prune.retain))
        lo, hi = self.workers
        if lo < 1 or hi < lo:
            raise UsageError(f"--workers must be MIN..MAX with 1 <= MIN <= MAX, got {lo}..{hi}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0:
            raise UsageError("--gpus-per-worker and --cpus-per-worker must be >= 0")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.slots < 0:
            raise UsageError(f"--slots must be >= 0, got {self.slots}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise UsageError(f"--max-batch-tokens must be >= 1, got {self.max_batch_tokens}")
        if not 0.0 <= self.shadow_fraction <= 1.0:
            raise UsageError(f"--shadow-fraction must be in [0, 1], got {self.shadow_fraction}")
        if not 0.0 <= self.max_error_fraction <= 1.0:
            raise UsageError(f"--max-error-fraction must be in [0, 1], got {self.max_error_fraction}")
        if self.window_s is not None and self.window_s < 1.0:
            raise UsageError(f"--window-s must be >= 1 second, got {self.window_s}")
        if self.run_id is not None and not _safe_run_id(self.run_id):
            raise UsageError("--run-id may hold only letters, digits, '.', '_' and '-'")
        return self

    def replace(self, **changes) -> RunOptions:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    output: str
    files_listed: int = 0
    files_skipped: int = 0  # already complete in earlier runs
    files_ok: int = 0
    files_failed: int = 0
    chunks: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    audio_tokens: int = 0
    kept_tokens: int = 0
    alpha_semantic: float | None = None
    alpha_uniform: float | None = None
    alpha_acoustic: float | None = None
    errors: dict = dataclasses.field(default_factory=dict)  # error kind -> count
    shadow_chunks: int = 0  # chunks also run unpruned (--shadow-fraction)
    shadow_agreement: tuple | None = None  # (mean, low, high): mean agreement and its bootstrap 95% interval
    prepare_s: float = 0.0  # the ok files' model-call time: host-side preparation,
    prefill_s: float = 0.0  # prefill (audio encoder + LLM),
    decode_s: float = 0.0  # and decode steps
    exit_code: int = 0

    @property
    def call_shares(self) -> dict | None:
        """Shares of the model calls' wall time: {"prepare", "prefill", "decode"} summing to 1 (None: no calls)."""
        total = self.prepare_s + self.prefill_s + self.decode_s
        if total <= 0:
            return None
        parts = {"prepare": self.prepare_s, "prefill": self.prefill_s, "decode": self.decode_s}
        return {k: v / total for k, v in parts.items()}

    @property
    def rtf(self) -> float | None:
        """Real-time factor: wall seconds per second of audio (lower is faster)."""
        return self.wall_s / self.audio_s if self.audio_s > 0 else None

    @property
    def error_fraction(self) -> float:
        done = self.files_ok + self.files_failed
        return self.files_failed / done if done else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rtf"] = self.rtf
        d["error_fraction"] = self.error_fraction
        d["call_shares"] = self.call_shares
        return d


def retain_error(retain) -> str:
    return f"--retain must be in (0, 1], got {retain}"


def _looks_like_manifest(uri: str) -> bool:
    return uri.lower().endswith((".jsonl", ".csv", ".parquet"))


def _safe_run_id(run_id: str) -> bool:
    return (
        bool(run_id)
        and len(run_id) <= 128
        and all(c.isalnum() or c in "._-" for c in run_id)
        and run_id[0] != "."
    )
