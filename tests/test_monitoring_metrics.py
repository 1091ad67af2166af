"""Metric definitions and the in-process back end, without servers."""

import sys
import types

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import monitoring
from monitoring import metrics as m


def _row(i=0, status="ok", **kw):
    row = dict(
        run_id="r",
        source="s3://bucket/secret-meeting-name.wav",
        chunk_index=i,
        start_s=10.0 * i,
        end_s=10.0 * i + 7.5,
        status=status,
        error="" if status == "ok" else "decode_error: bad header",
        task="asr",
        model="/tmp/models/tiny-random",
        method="headrouter",
        retain=0.6,
        audio_tokens=100,
        kept_tokens=60,
        alpha_semantic=0.5,
        alpha_uniform=0.3,
        alpha_acoustic=0.2,
        prefill_s=0.2,
        decode_s=0.6,
        kv_bytes_full=1000,
        kv_bytes_kept=600,
    )
    row.update(kw)
    return row


def _samples(registry):
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _get(samples, name, **labels):
    return sum(v for (n, lab), v in samples.items() if n == name and labels.items() <= dict(lab).items())


def test_names_follow_prometheus_conventions():
    names = [spec.name for spec in m.ALL_METRICS]
    assert len(names) == len(set(names))
    for spec in m.ALL_METRICS:
        assert spec.name.startswith("headrouter_")
        assert (spec.kind == "counter") == spec.name.endswith("_total"), spec.name
        assert not {"source", "file", "path", "id", "run_id"} & set(spec.labels), spec.name
        assert set(m.BASE_LABELS) <= set(spec.labels)
        if (
            "latency" in spec.name
            or "prefill" in spec.name
            or "decode" in spec.name
            or "duration" in spec.name
        ):
            assert spec.name.removesuffix("_total").endswith("_seconds"), spec.name
        if "bytes" in spec.name:
            assert spec.name.removesuffix("_total").endswith("_bytes"), spec.name
        if spec.kind == "histogram":
            assert list(spec.buckets) == sorted(spec.buckets) and spec.buckets[0] > 0


@pytest.mark.parametrize(
    "message, kind",
    [
        ("decode_error: invalid data found", "decode_error"),
        ("empty: file has zero bytes", "empty"),
        ("invalid_audio: sample 0: shorter than 40 ms", "invalid_audio"),
        ("too_long: chunk exceeds the model window of 300 s", "too_long"),
        ("RuntimeError: CUDA out of memory. Tried to allocate", "out_of_memory"),
        ("[Errno 2] No such file or directory: '/data/x.wav'", "not_found"),
        ("something nobody foresaw /data/x.wav", "other"),
        (None, "other"),
    ],
)
def test_error_kind_is_a_closed_set(message, kind):
    assert monitoring.error_kind(message) == kind
    assert kind in m.ERROR_KINDS


def test_model_label_drops_paths_not_hub_ids():
    assert m.model_label("/tmp/x/tiny-random/") == "tiny-random"
    assert m.model_label("s3://models/prod/qwen-omni-7b") == "qwen-omni-7b"
    assert m.model_label("Qwen/Qwen2.5-Omni-7B") == "Qwen/Qwen2.5-Omni-7B"
    assert m.model_label(None) == "unknown"


def test_chunk_metrics_in_process_values():
    registry = CollectorRegistry()
    cm = monitoring.ChunkMetrics(backend="prometheus", registry=registry)
    assert cm.backend == "prometheus"
    cm.observe(_row(0))
    cm.observe(_row(1, alpha_semantic=float("nan"), kv_bytes_full=None), latency_s=2.0)
    cm.observe(_row(2, status="error", audio_tokens=None))
    s = _samples(registry)
    base = dict(model="tiny-random", method="headrouter", task="asr")
    assert _get(s, "headrouter_chunks_total", status="ok", **base) == 2
    assert _get(s, "headrouter_chunks_total", status="error", **base) == 1
    assert _get(s, "headrouter_errors_total", kind="decode_error", **base) == 1
    assert _get(s, "headrouter_audio_seconds_total", **base) == pytest.approx(15.0)  # ok chunks only
    assert _get(s, "headrouter_audio_tokens_total") == 200
    assert _get(s, "headrouter_audio_tokens_kept_total") == 120
    assert _get(s, "headrouter_kv_cache_full_bytes_total") == 1000  # None is skipped, not counted as 0 or NaN
    assert _get(s, "headrouter_kv_cache_kept_bytes_total") == 1200
    assert _get(s, "headrouter_prefill_seconds_count") == 2
    assert _get(s, "headrouter_chunk_latency_seconds_sum") == pytest.approx(0.8 + 2.0)
    assert _get(s, "headrouter_routing_coefficient_count", profile="semantic") == 1  # the NaN is dropped
    assert _get(s, "headrouter_routing_coefficient_sum", profile="acoustic") == pytest.approx(0.4)
    # No file name and no peak memory without an accelerator.
    assert not any("secret-meeting" in str(lab) for _, lab in s)
    assert not any(n.startswith("headrouter_accelerator") for n, _ in s)


def test_peak_memory_set_when_cuda_reports(monkeypatch):
    cuda = types.SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: True, max_memory_allocated=lambda: 123456789
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    registry = CollectorRegistry()
    monitoring.ChunkMetrics(backend="prometheus", registry=registry).observe(_row())
    assert _get(_samples(registry), "headrouter_accelerator_memory_peak_bytes") == 123456789


def test_run_metrics_totals_and_last_success_only_on_success():
    ok = monitoring.RunMetrics("job", "r1", "tiny-random", "headrouter", "asr", served=False)
    ok.observe_rows([_row(0), _row(1), _row(2, status="error")])
    failed = monitoring.RunMetrics("job", "r2", "tiny-random", "headrouter", "asr", served=False)
    failed.observe_rows([_row(0, status="error")])
    s = _samples(ok.registry)
    assert _get(s, "headrouter_run_in_progress") == 1
    assert _get(s, "headrouter_run_audio_seconds") == pytest.approx(15.0)
    assert _get(s, "headrouter_run_chunks", status="error") == 1
    assert _get(s, "headrouter_run_audio_tokens_kept") == 120
    assert ok.finish(True, duration_s=3.0) is False  # no gateway, nothing pushed
    failed.finish(False)
    s_ok, s_failed = _samples(ok.registry), _samples(failed.registry)
    assert _get(s_ok, "headrouter_run_success") == 1 and _get(s_ok, "headrouter_run_in_progress") == 0
    assert _get(s_ok, "headrouter_run_duration_seconds") == 3.0
    assert _get(s_ok, "headrouter_run_last_success_timestamp_seconds") > 1.7e9
    assert _get(s_failed, "headrouter_run_success") == 0
    assert not any(n == "headrouter_run_last_success_timestamp_seconds" for n, _ in s_failed)


def test_unreachable_pushgateway_is_logged_not_raised(caplog):
    rm = monitoring.RunMetrics(
        "job", "r", "m", "headrouter", "asr", gateway="http://127.0.0.1:9", served=False
    )
    assert rm.finish(True) is False
    assert "could not push" in caplog.text


def test_shadow_metrics_by_retain_bucket():
    registry = CollectorRegistry()
    cm = monitoring.ChunkMetrics(backend="prometheus", registry=registry)
    cm.observe(_row(0, retain=0.4, shadow_agreement=1.0))
    cm.observe(_row(1, retain=0.4, shadow_agreement=0.5))
    cm.observe(_row(2, retain=0.4))  # not shadowed
    cm.observe(_row(3, retain=0.62, shadow_agreement=0.9))
    s = _samples(registry)
    base = dict(model="tiny-random", method="headrouter", task="asr")
    assert _get(s, "headrouter_shadow_chunks_total", retain="0.4", **base) == 2
    assert _get(s, "headrouter_shadow_agreement_sum", retain="0.4", **base) == pytest.approx(1.5)
    assert _get(s, "headrouter_shadow_agreement_count", retain="0.6", **base) == 1
    assert _get(s, "headrouter_shadow_agreement_bucket", retain="0.4", le="0.5", **base) == 1
    assert [m.retain_label(r) for r in (0.4, 0.449, 1.0, None, "x", float("nan"))] == [
        "0.4", "0.4", "1.0", "unknown", "unknown", "unknown"
    ]  # fmt: skip
