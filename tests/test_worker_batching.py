"""The actor's batch plan (length groups, KV-token budget) and its out-of-memory split, on the real tiny model."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.graph import SEGMENT_SCHEMA
from pipeline.sink import CHUNK_SCHEMA
from tests.test_engine import clip
from workers.batching import KVCost, plan_batches
from workers.inference import InferenceWorker
from workers.options import WorkerOptions

SR = 16000


def test_kv_cost_counts_kept_tokens_for_layers_from_m():
    cost = KVCost(num_layers=12, layer=2, max_new_tokens=64)
    # 2 layers hold all 7,530 input tokens, 10 layers the 3,030 kept ones, all 12 the 64 new ones
    assert cost(7530, 3030) == pytest.approx((2 * 7530 + 10 * 3030) / 12 + 64)
    assert cost(7530, 7530) == 7530 + 64


@settings(max_examples=200, deadline=None)
@given(
    costs=st.lists(st.floats(1, 1000), min_size=0, max_size=40),
    size=st.integers(1, 9),
    budget=st.one_of(st.none(), st.floats(1, 5000)),
)
def test_plan_holds_every_chunk_once_within_size_and_budget(costs, size, budget):
    batches = plan_batches(costs, size, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(costs)))
    for b in batches:
        assert 1 <= len(b) <= size
        longest = max(costs[i] for i in b)
        assert len(b) == 1 or budget is None or len(b) * longest <= budget
    # grouped by length: no chunk of a later batch is longer than the shortest of an earlier one
    for earlier, later in zip(batches, batches[1:]):
        assert min(costs[i] for i in earlier) >= max(costs[i] for i in later)


def test_a_pruned_run_fits_more_chunks_under_the_same_budget():
    cost = KVCost(num_layers=36, layer=2, max_new_tokens=64)
    full, kept = 7500 + 40, 40 + 3000  # a 300-s chunk: vanilla vs HeadRouter 0.4
    budget = 16 * cost(full, full)
    vanilla = plan_batches([cost(full, full)] * 64, 64, budget)
    pruned = plan_batches([cost(full, kept)] * 64, 64, budget)
    assert len(vanilla[0]) == 16 and len(pruned[0]) >= 2 * 16


class _Recorder:
    def __init__(self):
        self.rows, self.splits = [], []

    def observe(self, row, latency_s=None):
        self.rows.append(row["id"])

    def observe_split(self, labels):
        self.splits.append(labels)


def _segments(seconds):
    rows = []
    for i, s in enumerate(seconds):
        audio = clip(s, seed=i)
        rows.append({"run_id": "r", "attempt_id": "a", "id": f"c{i}", "source": f"c{i}", "task": "asr",
                     "question": None, "choices": None, "chunk_index": 0, "start_s": 0.0, "end_s": s,
                     "last": True, "silent": False, "status": "ok", "error": "",
                     "audio": audio.astype("<f4").tobytes()})  # fmt: skip
    return rows


def _worker(**kw):
    worker = InferenceWorker(WorkerOptions(model="tiny-random", max_new_tokens=3, **kw), CHUNK_SCHEMA)
    worker._metrics = _Recorder()
    return worker


def _oom_above(worker, limit: int):
    """A fake allocator failure: any forward with more than `limit` samples raises torch.OutOfMemoryError."""

    def check(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[0] > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (fake): batch {ids.shape[0]} > {limit}")

    return worker.lalm.model.register_forward_pre_hook(check, with_kwargs=True)


def test_out_of_memory_splits_the_batch_and_loses_nothing():
    rows = _segments([1.0, 2.5, 0.7, 1.9, 3.0])
    reference = _worker(batch_size=8)
    expected = reference.infer(rows)
    worker = _worker(batch_size=8)
    calls = _count_calls(worker)
    handle = _oom_above(worker, 2)
    try:
        out = worker(pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA))
    finally:
        handle.remove()
    got = out.to_pylist()
    assert [r["id"] for r in got] == [r["id"] for r in rows]  # every chunk once, in order
    assert all(r["status"] == "ok" for r in got)
    assert [r["text"] for r in got] == [r["text"] for r in expected]
    assert calls == [5, 2, 3, 1, 2]  # 5 fails -> 2 + 3; 3 fails -> 1 + 2
    assert len(worker._metrics.splits) == 2 and sorted(worker._metrics.rows) == sorted(r["id"] for r in rows)


def test_one_chunk_out_of_memory_is_an_error_row_not_a_crash():
    worker = _worker(batch_size=4)
    handle = _oom_above(worker, 0)
    try:
        got = worker(pa.Table.from_pylist(_segments([1.0, 2.0]), schema=SEGMENT_SCHEMA)).to_pylist()
    finally:
        handle.remove()
    assert [r["status"] for r in got] == ["error", "error"]
    assert all(r["error"].startswith("out_of_memory:") for r in got)


def _count_calls(worker) -> list[int]:
    calls = []
    generate = worker.lalm.generate
    worker.lalm.generate = lambda audios, *a, **k: calls.append(len(audios)) or generate(audios, *a, **k)
    return calls


def test_budget_is_counted_in_kv_terms_so_pruning_fits_more_chunks_per_call():
    rows = _segments([10.0] * 8)
    total, _ = _worker().lalm.token_counts(10 * SR, _worker().lalm.asr_prompt)
    budget = 2 * (total + 3) + 1  # two vanilla chunks, padded, with their 3 new tokens
    sizes = {}
    for method, retain in (("vanilla", 1.0), ("headrouter", 0.2)):
        worker = _worker(batch_size=8, method=method, retain=retain, layer=1, max_batch_tokens=budget)
        calls = _count_calls(worker)
        out = worker.infer(rows)
        assert all(r["status"] == "ok" for r in out) and sum(calls) == 8
        sizes[method] = max(calls)
    # tiny-random: 4 layers, M = 1; 250 audio tokens of 10 s, 50 kept: (1 * 270 + 3 * 70) / 4 + 3 = 123 KV tokens
    assert sizes["vanilla"] == 2 and sizes["headrouter"] == 4


def test_token_counts_match_the_prepared_inputs():
    worker = _worker()
    lalm = worker.lalm
    for seconds in (0.3, 2.0, 7.7):
        audio = clip(seconds)
        total, audio_tokens = lalm.token_counts(audio.size, "summarize")
        ids = lalm.prepare(audio, "summarize")["input_ids"]
        assert total == ids.shape[1] and audio_tokens == int((ids == lalm.token_ids.audio).sum())
    assert np.isfinite(total)


def test_out_of_memory_in_the_shadow_call_splits_it_too():
    rows = _segments([1.0, 2.5, 0.7, 1.9])
    worker = _worker(batch_size=8, shadow_fraction=1.0)
    handle = _oom_above(worker, 2)
    try:
        got = worker(pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA)).to_pylist()
    finally:
        handle.remove()
    assert [r["status"] for r in got] == ["ok"] * 4
    assert all(r["shadow_agreement"] is not None and r["shadow_text"] is not None for r in got)
