"""The inference actor of the pipeline's `map_batches`: loads the model once, turns chunk batches into result rows.

A Ray batch is planned into `generate` calls (workers.batching: in the engine's batch groups, by length, under a
KV-token budget counted by the engine). The pruning options come with each call (`infer(rows, prune)`, default
the run's `WorkerOptions.prune`), so one worker serves every setting (the shadow run, jobs.tune's retains).
A bad sample never raises: it becomes a row with status 'error' and a one-line `error`. When a call fails, it
is retried one sample at a time so only the guilty sample is marked; when it runs out of accelerator memory,
it is split in two and each half retried (logged and counted), so no row is lost or duplicated.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace

import numpy as np
import pyarrow as pa

from headrouter.engine.audio import AudioInputError
from headrouter.engine.prompt import task_prompt
from headrouter.options import PruneOptions
from workers.batching import plan_batches
from workers.engine import Engine
from workers.options import WorkerOptions

log = logging.getLogger("workers")


class _NoMetrics:
    def observe(self, row: dict, latency_s: float | None = None) -> None:
        pass

    def observe_split(self, labels: dict) -> None:
        pass

    def observe_slots(self, labels: dict, busy: int, slot_steps: int, refills: int) -> None:
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
    """`__call__(batch) -> pyarrow.Table` of `schema` rows (the pipeline's chunk schema); one instance per actor,
    model loaded once."""

    def __init__(self, opts: WorkerOptions, schema: pa.Schema, lalm: Engine | None = None):
        self.opts = opts
        self.schema = schema
        if lalm is None:
            from headrouter import load_lalm
            from headrouter.engine.loop import EngineOptions

            lalm = load_lalm(opts.model, device=_device(opts), endpoint_url=opts.s3_endpoint)
            lalm.engine_options = EngineOptions(cuda_graphs=opts.cuda_graphs)
        self.lalm: Engine = lalm
        self.model_id = lalm.model_id
        self.window_s = float(lalm.window_s)
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
            out = [
                self._finish(r, self.opts.prune, error=f"inference_error: {type(e).__name__}: {e}")
                for r in rows
            ]
        for row in out:
            try:
                self._metrics.observe(row)  # the single metrics call site (monitoring.ChunkMetrics)
            except Exception:
                log.debug("metrics observe failed", exc_info=True)
        return pa.Table.from_pylist(out, schema=self.schema)

    def infer(self, rows: list[dict], prune: PruneOptions | None = None) -> list[dict]:
        """Result rows for segment rows (pipeline.graph.SEGMENT_SCHEMA), in the same order, pruned per `prune`
        (default: the run's `opts.prune`)."""
        prune = self.opts.prune if prune is None else prune
        out: list[dict | None] = [None] * len(rows)
        todo = []
        for i, r in enumerate(rows):
            if r["status"] != "ok":
                out[i] = self._finish(r, prune, error=r["error"])
            elif r.get("silent"):
                out[i] = self._finish(
                    r, prune, text=""
                )  # no model call on digital silence: nothing to hallucinate
            elif r["end_s"] - r["start_s"] > self.window_s + 1e-6:
                out[i] = self._finish(
                    r, prune, error=f"too_long: chunk exceeds the model window of {self.window_s:g} s"
                )
            else:
                todo.append(i)
        if todo:
            asr = self.lalm.asr_prompt
            prompts = [
                task_prompt(rows[i]["task"], rows[i].get("question"), _choices(rows[i]), asr) for i in todo
            ]
            if self.opts.slots > 0:
                results = self._stream([rows[i] for i in todo], prompts, prune)
                for i, result in zip(todo, results):
                    out[i] = result
                self._shadow([rows[i] for i in todo], prompts, results, prune)
                return out
            for group in self._plan([rows[i] for i in todo], prompts, prune, self.opts.batch_size):
                picked = [todo[j] for j in group]
                results = self._generate([rows[i] for i in picked], [prompts[j] for j in group], prune)
                for i, result in zip(picked, results):
                    out[i] = result
                self._shadow([rows[i] for i in picked], [prompts[j] for j in group], results, prune)
        return out

    def _plan(self, rows: list[dict], prompts: list[str], prune: PruneOptions, size: int) -> list[list[int]]:
        """The calls for these chunks (workers.batching.plan_batches): the engine's batch groups, at most `size`
        chunks and `max_batch_tokens` KV tokens (`Engine.kv_tokens`) per call."""
        samples = [len(r["audio"]) // 4 for r in rows]  # float32 samples
        counts = []
        for n, prompt in zip(samples, prompts):
            try:
                counts.append(self.lalm.token_counts(n, prompt))
            except Exception:  # a bad chunk is reported by its own generate call, not here
                counts.append((0, 0))
        new = self.opts.max_new_tokens

        def cost(indices: list[int]) -> float:
            return self.lalm.kv_tokens([counts[i] for i in indices], prune, new)

        sizes = [cost([i]) for i in range(len(rows))]
        return plan_batches(sizes, size, self.opts.max_batch_tokens, cost, self.lalm.batch_groups(samples))

    def _shadow(self, rows: list[dict], prompts: list[str], results: list[dict], prune: PruneOptions) -> None:
        """Run the shadowed chunks of one planned batch again unpruned (one call) and fill their shadow columns.

        The shadow's model time goes to shadow_s, never to prefill_s/decode_s; a failure leaves the columns null.
        """
        if self.opts.shadow_fraction <= 0 or prune.method == "vanilla":
            return
        from workers.shadow import shadowed

        picked = [
            j
            for j, (r, res) in enumerate(zip(rows, results))
            if res["status"] == "ok"
            and not res.get("silent")
            and shadowed(r["id"], r["chunk_index"], self.opts.shadow_fraction)
        ]
        if not picked:
            return
        # the same model, gating and layer, nothing pruned (kept tokens == audio tokens); unpruned chunks hold
        # more KV: one call unless the budget asks for more
        vanilla = replace(prune, method="vanilla")
        plan = self._plan([rows[j] for j in picked], [prompts[j] for j in picked], vanilla, len(picked))
        for group in plan:
            self._shadow_call(rows, prompts, results, [picked[g] for g in group], vanilla)

    def _shadow_call(
        self,
        rows: list[dict],
        prompts: list[str],
        results: list[dict],
        call: list[int],
        vanilla: PruneOptions,
    ) -> None:
        """One unpruned call for the rows `call`; out of memory splits it in halves like the pruned calls."""
        from quality.agreement import agreement

        audios = [np.frombuffer(rows[j]["audio"], dtype="<f4") for j in call]
        try:
            outs = self._call(audios, [prompts[j] for j in call], vanilla)
        except Exception as e:
            _free_accelerator_memory()
            if _out_of_memory(e) and len(call) > 1:
                half = len(call) // 2
                log.warning("out of memory on a shadow call of %d chunks: splitting", len(call))
                self._shadow_call(rows, prompts, results, call[:half], vanilla)
                self._shadow_call(rows, prompts, results, call[half:], vanilla)
            else:
                log.warning("shadow run of %d chunks failed (pruned results kept): %s", len(call), e)
            return
        for j, gen in zip(call, outs):
            res = results[j]
            res.update(
                shadow_text=gen.text,
                shadow_agreement=agreement(str(res.get("task")), res.get("text"), gen.text),
                shadow_s=float(gen.prefill_s) + float(gen.decode_s),
            )

    def _generate(self, rows: list[dict], prompts: list[str], prune: PruneOptions) -> list[dict]:
        audios = [np.frombuffer(r["audio"], dtype="<f4") for r in rows]  # each [n] float32, 16 kHz
        try:
            outs = self._call(audios, prompts, prune)
        except Exception as e:
            if _out_of_memory(e):
                return self._split(rows, prompts, prune, e)
            if len(rows) > 1:  # find the guilty sample(s): one at a time
                return [self._generate([r], [p], prune)[0] for r, p in zip(rows, prompts)]
            kind = "invalid_audio" if isinstance(e, AudioInputError) else "inference_error"
            return [self._finish(rows[0], prune, error=f"{kind}: {e}")]
        return [self._finish(r, prune, gen=g) for r, g in zip(rows, outs)]

    def _stream(self, rows: list[dict], prompts: list[str], prune: PruneOptions) -> list[dict]:
        """Continuous batching over `opts.slots` slots (`LALM.stream`): one result row per chunk, in order. A chunk
        that fails on its own becomes its error row; if the stream itself fails, the chunks it has not finished
        go through the static calls (which split on out of memory), so none is lost or written twice."""
        from headrouter.engine.stream import Request, StreamStats

        audios = [np.frombuffer(r["audio"], dtype="<f4") for r in rows]  # each [n] float32, 16 kHz
        requests = [Request(i, a, p) for i, (a, p) in enumerate(zip(audios, prompts))]
        out: list[dict | None] = [None] * len(rows)
        stats = StreamStats()
        try:
            for i, gen in self.lalm.stream(requests, prune, self.opts.max_new_tokens, slots=self.opts.slots,
                                           stats=stats):  # fmt: skip
                if isinstance(gen, Exception):
                    kind = "invalid_audio" if isinstance(gen, AudioInputError) else "inference_error"
                    kind = "out_of_memory" if _out_of_memory(gen) else kind
                    out[i] = self._finish(rows[i], prune, error=f"{kind}: {gen}")
                else:
                    out[i] = self._finish(rows[i], prune, gen=gen)
                    out[i]["queue_s"] = float(gen.queue_s)
        except Exception:
            log.exception("continuous batching failed: the unfinished chunks go through static calls")
            _free_accelerator_memory()
            left = [i for i, r in enumerate(out) if r is None]
            for i, result in zip(
                left, self._generate([rows[i] for i in left], [prompts[i] for i in left], prune)
            ):
                out[i] = result
        labels = {"model": self.model_id, "method": prune.method, "task": str(rows[0].get("task"))}
        try:
            self._metrics.observe_slots(labels, stats.row_steps, stats.slot_steps, stats.refills)
        except Exception:
            log.debug("metrics observe_slots failed", exc_info=True)
        return out

    def _split(
        self, rows: list[dict], prompts: list[str], prune: PruneOptions, error: Exception
    ) -> list[dict]:
        """Out of accelerator memory: retry the two halves (each may split again); one chunk alone is an error."""
        _free_accelerator_memory()
        if len(rows) == 1:
            return [self._finish(rows[0], prune, error=f"out_of_memory: {error}")]
        half = len(rows) // 2
        log.warning(
            "out of memory on a batch of %d chunks: splitting into %d + %d", len(rows), half, len(rows) - half
        )
        labels = {"model": self.model_id, "method": prune.method, "task": str(rows[0].get("task"))}
        try:
            self._metrics.observe_split(labels)
        except Exception:
            log.debug("metrics observe_split failed", exc_info=True)
        first = self._generate(rows[:half], prompts[:half], prune)
        return first + self._generate(rows[half:], prompts[half:], prune)

    def _call(self, audios, prompts, prune: PruneOptions):
        outs = self.lalm.generate(audios, prompts, prune, max_new_tokens=self.opts.max_new_tokens)
        if len(outs) != len(audios):
            raise RuntimeError(f"model returned {len(outs)} outputs for {len(audios)} inputs")
        return outs

    def _finish(
        self, r: dict, prune: PruneOptions, gen=None, text: str | None = None, error: str = ""
    ) -> dict:
        row = {k: r.get(k) for k in self.schema.names if k in r}
        row.update(model=self.model_id, method=prune.method, retain=float(prune.retain), budget=prune.budget,
                   node_id=self.node_id)  # fmt: skip
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
                prepare_s=float(gen.prepare_s),
                kv_bytes_full=int(gen.kv_bytes_full),
                kv_bytes_kept=int(gen.kv_bytes_kept),
                skipped_s=float(gen.skipped_s),
            )
            if gen.silent:  # every encoder window empty: no model call, as digital silence
                row["silent"] = True
        return row


def _out_of_memory(e: Exception) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(e, torch.OutOfMemoryError)


def _free_accelerator_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _device(opts: WorkerOptions) -> str:
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
