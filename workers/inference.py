"""The inference actor of the pipeline's `map_batches`: loads the model once, turns chunk batches into result rows.

A bad sample never raises: it becomes a row with status 'error' and a one-line `error`. When a batched call
fails, the batch is retried one sample at a time so only the guilty sample is marked.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa

from headrouter.prompt import ASR_PROMPT, task_prompt
from pipeline.options import RunOptions
from pipeline.sink import CHUNK_SCHEMA

log = logging.getLogger("workers")


class _NoMetrics:
    def observe(self, row: dict, latency_s: float | None = None) -> None:
        pass


def chunk_metrics():
    """The per-chunk metrics recorder of monitoring/, or a no-op when monitoring is unavailable."""
    try:
        from monitoring import ChunkMetrics

        return ChunkMetrics()
    except Exception as e:  # metrics must never stop inference
        log.warning("chunk metrics disabled: %s", e)
        return _NoMetrics()


class InferenceWorker:
    """`__call__(batch) -> pyarrow.Table` of CHUNK_SCHEMA rows; one instance per actor, model loaded once."""

    def __init__(self, opts: RunOptions, lalm=None):
        from headrouter.options import PruneOptions

        self.opts = opts
        self.prune = PruneOptions(
            method=opts.method, retain=opts.retain, layer=opts.layer, profiles=opts.profiles
        )
        if lalm is None:
            from headrouter import load_lalm

            lalm = load_lalm(opts.model, device=_device(opts), endpoint_url=opts.s3_endpoint)
        self.lalm = lalm
        self.model_id = getattr(lalm, "model_id", opts.model)
        self.window_s = float(getattr(lalm, "window_s", 300.0))
        self.node_id = _node_id()
        self._metrics = chunk_metrics()

    def __call__(self, batch: pa.Table | dict[str, np.ndarray]) -> pa.Table:
        if isinstance(batch, pa.Table):
            rows = batch.to_pylist()
        else:
            rows = [{k: _scalar(v[i]) for k, v in batch.items()} for i in range(len(batch["id"]))]
        try:
            out = self.infer(rows)
        except Exception as e:  # a bug here must still not abort the dataset: mark the whole batch
            log.exception("inference batch failed")
            out = [self._finish(r, error=f"inference_error: {type(e).__name__}: {e}") for r in rows]
        for row in out:
            try:
                self._metrics.observe(row)  # the single metrics call site (monitoring.ChunkMetrics)
            except Exception:
                log.debug("metrics observe failed", exc_info=True)
        return pa.Table.from_pylist(out, schema=CHUNK_SCHEMA)

    def infer(self, rows: list[dict]) -> list[dict]:
        """Result rows for segment rows (pipeline.graph.SEGMENT_SCHEMA), in the same order."""
        out: list[dict | None] = [None] * len(rows)
        todo = []
        for i, r in enumerate(rows):
            if r["status"] != "ok":
                out[i] = self._finish(r, error=r["error"])
            elif r.get("silent"):
                out[i] = self._finish(r, text="")  # no model call on digital silence: nothing to hallucinate
            elif r["end_s"] - r["start_s"] > self.window_s + 1e-6:
                out[i] = self._finish(
                    r, error=f"too_long: chunk exceeds the model window of {self.window_s:g} s"
                )
            else:
                todo.append(i)
        if todo:
            for i, result in zip(todo, self._generate([rows[i] for i in todo])):
                out[i] = result
        return out

    def _generate(self, rows: list[dict]) -> list[dict]:
        audios = [np.frombuffer(r["audio"], dtype="<f4") for r in rows]  # each [n] float32, 16 kHz
        asr = getattr(self.lalm, "asr_prompt", ASR_PROMPT)
        prompts = [task_prompt(r["task"], r.get("question"), _choices(r), asr) for r in rows]
        try:
            outs = self._call(audios, prompts)
        except Exception as e:
            if len(rows) > 1:  # find the guilty sample(s): one at a time
                return [self._generate([r])[0] for r in rows]
            kind = "invalid_audio" if type(e).__name__ == "AudioInputError" else "inference_error"
            return [self._finish(rows[0], error=f"{kind}: {e}")]
        return [self._finish(r, gen=g) for r, g in zip(rows, outs)]

    def _call(self, audios, prompts):
        outs = self.lalm.generate(audios, prompts, self.prune, max_new_tokens=self.opts.max_new_tokens)
        if len(outs) != len(audios):
            raise RuntimeError(f"model returned {len(outs)} outputs for {len(audios)} inputs")
        return outs

    def _finish(self, r: dict, gen=None, text: str | None = None, error: str = "") -> dict:
        row = {k: r.get(k) for k in CHUNK_SCHEMA.names if k in r}
        row.update(
            model=self.model_id, method=self.opts.method, retain=float(self.opts.retain), node_id=self.node_id
        )
        row.pop("audio", None)
        if error:
            row.update(status="error", error=" ".join(str(error).split())[:300], text=None)
            return row
        row.update(status="ok", error="", text=text)
        if gen is not None:
            routing = gen.routing or {}
            alpha = routing.get("alpha") or (None, None, None)
            row.update(
                text=gen.text,
                audio_tokens=int(gen.audio_tokens),
                kept_tokens=int(gen.kept_tokens),
                alpha_semantic=_float(alpha[0]),
                alpha_uniform=_float(alpha[1]),
                alpha_acoustic=_float(alpha[2]),
                spread=_float(routing.get("spread")),
                prefill_s=float(gen.prefill_s),
                decode_s=float(gen.decode_s),
                kv_bytes_full=int(gen.kv_bytes_full),
                kv_bytes_kept=int(gen.kv_bytes_kept),
            )
        return row


def _device(opts: RunOptions) -> str:
    if opts.gpus_per_worker > 0 and opts.device == "cpu":
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"
    return opts.device


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:
        return ""


def _scalar(v):
    return v.item() if isinstance(v, np.generic) else v


def _choices(r: dict) -> list[str] | None:
    c = r.get("choices")
    return json.loads(c) if c else None


def _float(v) -> float | None:
    return None if v is None else float(v)
