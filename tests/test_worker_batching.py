"""The actor's batch plan (the engine's batch groups, length order, KV-token budget from `LALM.kv_tokens`) and its
out-of-memory split, on the real tiny models."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headrouter import PruneOptions, load_lalm
from pipeline.graph import SEGMENT_SCHEMA
from pipeline.sink import CHUNK_SCHEMA
from tests.families import FAMILIES
from tests.test_engine import clip
from workers.batching import plan_batches
from workers.inference import InferenceWorker
from workers.options import WorkerOptions

SR = 16000


def test_kv_tokens_is_the_padded_call_with_kept_tokens_from_layer_m():
    lalm = load_lalm("tiny-random")  # 4 layers
    pruned = PruneOptions(retain=0.2, layer=1)
    # (input, audio) tokens: 10 s (250 audio) and 2 s (50 audio) clips with a 20-token prompt
    counts = [(270, 250), (70, 50)]
    # kept: 270 - 250 + floor(250 * 0.2) = 70 and 70 - 50 + 10 = 30; the call is padded to the longest of each
    # B * (M * (max T + new) + (L - M) * (max K + new)) / L with B 2, M 1, L 4, new 3
    assert lalm.kv_tokens(counts, pruned, 3) == 2 * (1 * (270 + 3) + 3 * (70 + 3)) / 4
    # the longest input and the longest kept input may come from different clips (max T and max K apart)
    assert lalm.kv_tokens([(270, 250), (200, 20)], pruned, 3) == 2 * (1 * 273 + 3 * (200 - 20 + 4 + 3)) / 4
    vanilla = PruneOptions(method="vanilla", layer=1)
    assert lalm.kv_tokens(counts, vanilla, 3) == 2 * (
        270 + 3
    )  # nothing kept out: every layer holds the input
    assert lalm.kv_tokens([(20, 0)], pruned, 3) == 20 + 3  # no audio, nothing to prune
    assert lalm.kv_tokens([], pruned, 3) == 0.0
    # with the markers prunable the span is N + 2: 270 - 252 + floor(252 * 0.2) = 68
    markers = PruneOptions(retain=0.2, layer=1, prune_audio_markers=True)
    assert lalm.kv_tokens([(270, 250)], markers, 3) == (1 * 273 + 3 * (68 + 3)) / 4


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
        # full: the next chunk in length order would have broken the size or the budget
        rest = [i for later in batches[batches.index(b) + 1 :] for i in later]
        if rest:
            nxt = max(rest, key=lambda i: (costs[i], -i))
            assert len(b) == size or (budget is not None and (len(b) + 1) * longest > budget)
            assert costs[nxt] <= min(costs[i] for i in b)
    # grouped by length: no chunk of a later batch is longer than the shortest of an earlier one
    for earlier, later in zip(batches, batches[1:]):
        assert min(costs[i] for i in earlier) >= max(costs[i] for i in later)


def test_plan_keeps_to_the_given_groups_and_cost():
    sizes = [5.0, 9.0, 1.0, 7.0, 3.0]
    groups = [[0, 2, 4], [1, 3]]
    calls = plan_batches(sizes, 2, None, groups=groups)
    assert calls == [[0, 4], [2], [1, 3]]  # each group on its own, longest first within it
    # a cost that is not size x longest: a call of n chunks costs 10 * n^2, so a budget of 40 takes two
    assert plan_batches([1.0] * 5, 5, 40, cost=lambda idx: 10 * len(idx) ** 2) == [[0, 1], [2, 3], [4]]


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


def _worker(model="tiny-random", method="headrouter", retain=0.6, layer=2, **kw):
    prune = PruneOptions(method=method, retain=retain, layer=layer)
    worker = InferenceWorker(WorkerOptions(model=model, prune=prune, max_new_tokens=3, **kw), CHUNK_SCHEMA)
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


@pytest.mark.parametrize("alias", FAMILIES)
def test_token_counts_match_the_prepared_inputs(alias):
    lalm = load_lalm(alias)
    seen = set()
    for seconds in (0.3, 2.0, 7.7, min(31.0, lalm.window_s - 0.5)):  # past Voxtral's first 30-s chunk
        audio = clip(seconds)
        total, audio_tokens = lalm.token_counts(audio.size, "summarize")
        ids = lalm.prepare(audio, "summarize")["input_ids"]
        assert total == ids.shape[1] and audio_tokens == int((ids == lalm.token_ids.audio).sum()), seconds
        seen.add(audio_tokens)
    assert (
        len(seen) >= 2
    )  # the lengths give different counts (Voxtral: 375 per started 30 s), so a count that
    # ignores them fails


@pytest.mark.parametrize("alias", ["tiny-random-phi4mm", "tiny-random-qwen3-omni"])
def test_planned_calls_are_never_regrouped_by_the_engine(alias):
    """Families whose encoders padding changes: the plan cuts the batch where the engine would, so every call
    holds one batch group (and the results equal each chunk alone)."""
    rows = _segments([1.0, 0.5, 1.0, 2.5, 0.5, 0.3, 2.5])
    worker = _worker(model=alias, batch_size=8)
    lalm = worker.lalm
    calls = []
    generate = lalm.generate

    def spy(audios, *a, **k):
        calls.append([len(x) for x in audios])
        return generate(audios, *a, **k)

    lalm.generate = spy
    out = worker.infer(rows)
    assert calls and all(len(lalm.batch_groups(call)) == 1 for call in calls), calls
    assert sorted(n for call in calls for n in call) == sorted(len(r["audio"]) // 4 for r in rows)
    alone = [_worker(model=alias, batch_size=1).infer([r])[0]["text"] for r in rows]
    assert [r["text"] for r in out] == alone


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
