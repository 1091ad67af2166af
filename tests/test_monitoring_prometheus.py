"""Metrics through real servers: Prometheus scrapes a /metrics port, a Pushgateway and a Ray metrics export port."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

import monitoring
from monitoring import metrics as m
from monitoring import stack

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "monitoring" / "grafana" / "headrouter-dashboard.json"
ALERTS = REPO / "monitoring" / "alerts.yml"
NIGHTLY = "headrouter-nightly-test"


def _has_cuda() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


def chunk_row(i, task="asr", status="ok", error="", length_s=6.0):
    return dict(
        run_id="r",
        source=f"/archive/meeting-{i}.wav",
        chunk_index=i,
        start_s=0.0,
        end_s=length_s,
        status=status,
        error=error,
        task=task,
        model="tiny-random",
        method="headrouter",
        retain=0.6,
        audio_tokens=150,
        kept_tokens=90,
        alpha_semantic=0.2 + 0.05 * (i % 5),
        alpha_uniform=0.3,
        alpha_acoustic=0.5 - 0.05 * (i % 5),
        spread=0.1,
        prefill_s=0.05 + 0.01 * i,
        decode_s=0.2 + 0.02 * i,
        prepare_s=0.01 + 0.001 * i,
        kv_bytes_full=150_000,
        kv_bytes_kept=90_000,
        shadow_agreement=1.0 if i % 3 else 0.75,  # every chunk shadowed
        skipped_s=2.0,  # an empty 2-s window skipped before the encoder (Ray counts only non-zero increments)
    )


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def _finite(result) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in result)


SLOT_LABELS = {"model": "tiny-random", "method": "headrouter", "task": "asr"}
SLOT_STREAM = (30, 40, 3)  # slot-steps that chose a token, slot-steps, refills


@pytest.fixture(scope="module")
def recorded(prometheus_stack):
    """A small batch recorded in-process and served on the scraped port, plus a pushed nightly run."""
    p = prometheus_stack
    server = monitoring.serve(p.metrics_port)
    chunks = monitoring.ChunkMetrics(backend="prometheus")
    run = monitoring.RunMetrics(NIGHTLY, "n1", "tiny-random", "headrouter", "asr", gateway=p.pushgateway)
    try:
        assert run.start()
        rows = [chunk_row(i, task="asr" if i % 2 == 0 else "qa") for i in range(10)]
        rows[4] = chunk_row(4, status="error", error="decode_error: bad header")
        rows[9] = chunk_row(9, task="qa", status="error", error="invalid_audio: sample 0 is empty")
        phase1, phase2 = rows[:5], rows[5:]  # both tasks in both phases: every series increases once scraped
        for row in phase1:
            chunks.observe(row)
            run.observe(row)
        chunks.observe_slots(SLOT_LABELS, *SLOT_STREAM)  # one continuous-batching stream per phase
        # Let Prometheus see the first values, so rates over the run are not zero.
        p.wait_for('sum(headrouter_chunks_total{job="headrouter"}) == 5', predicate=bool)
        time.sleep(1.5)
        for row in phase2:
            chunks.observe(row)
            run.observe(row)
        chunks.observe_slots(SLOT_LABELS, *SLOT_STREAM)
        assert run.finish(True)
        p.wait_for('sum(headrouter_chunks_total{job="headrouter"}) == 10')
        p.wait_for(f'headrouter_run_in_progress{{job="{NIGHTLY}"}} == 0')
        yield phase1 + phase2
    finally:
        run.close()
        server.shutdown()
        server.server_close()


def test_promtool_checks_and_unit_tests_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian prometheus) missing")
    out = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout
    tests = REPO / "monitoring" / "alerts_test.yml"
    out = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_metric_has_samples_with_the_recorded_values(prometheus_stack, recorded):
    p = prometheus_stack
    for spec in m.ALL_METRICS:
        name = spec.name + ("_count" if spec.kind == "histogram" else "")
        result = p.query(f"{name}")
        if spec is m.PEAK_MEMORY and not _has_cuda():
            assert result == [], "peak accelerator memory must stay unset without an accelerator"
            continue
        assert result, f"no samples for {name}"
        for sample in result:
            assert "source" not in sample["metric"] and "file" not in sample["metric"]
    ok = [r for r in recorded if r["status"] == "ok"]

    def value(expr):
        (sample,) = p.query(expr)
        return float(sample["value"][1])

    assert value('sum(headrouter_audio_seconds_total{job="headrouter"})') == sum(r["end_s"] for r in ok)
    assert value('sum(headrouter_errors_total{job="headrouter", kind="invalid_audio", task="qa"})') == 1
    assert value('sum(headrouter_chunks_total{job="headrouter", status="ok", task="asr"})') == 4
    assert value('sum(headrouter_routing_coefficient_count{job="headrouter", profile="semantic"})') == len(ok)
    assert value('sum(headrouter_shadow_chunks_total{job="headrouter", retain="0.6"})') == len(ok)
    assert value('sum(headrouter_shadow_agreement_sum{job="headrouter"})') == sum(
        r["shadow_agreement"] for r in ok
    )
    assert value(f'headrouter_run_chunks{{job="{NIGHTLY}", run_id="n1", status="error"}}') == 2
    assert value(f'headrouter_run_audio_tokens_kept{{job="{NIGHTLY}"}}') == sum(r["kept_tokens"] for r in ok)
    assert value(f'headrouter_run_success{{job="{NIGHTLY}", run_id="n1"}}') == 1


def test_rules_load_and_every_dashboard_and_rule_expression_returns_data(prometheus_stack, recorded):
    p = prometheus_stack
    with urllib.request.urlopen(f"{p.prometheus}/api/v1/rules") as r:
        loaded = [rule for g in json.load(r)["data"]["groups"] for rule in g["rules"]]
    assert len(loaded) == len(rules())
    assert all(rule["health"] == "ok" for rule in loaded), [(x["name"], x.get("lastError")) for x in loaded]

    # Ray's own GPU series exist only on nodes with a GPU: checked against Ray's names in the test below
    wanted = [e for e in dashboard_exprs() if "ray_node_g" not in e] + [
        r["expr"] for r in rules() if "record" in r
    ]
    accelerator = [e for e in wanted if "accelerator" in e]
    if not _has_cuda():
        wanted = [e for e in wanted if e not in accelerator]
        assert all(p.query(e) == [] for e in accelerator)
    deadline = time.monotonic() + 45
    while True:
        empty = [e for e in wanted if not _finite(p.query(e))]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not empty, f"no finite data for: {empty}"
    # Alerts: each evaluates without error now (firing scenarios live in monitoring/alerts_test.yml).
    for r in rules():
        if "alert" in r:
            p.query(r["expr"])
    (age,) = p.wait_for(f'headrouter:last_success_age_seconds{{job="{NIGHTLY}"}}', timeout=15)
    assert 0 <= float(age["value"][1]) < 600


def test_a_failed_run_does_not_overwrite_last_success(prometheus_stack):
    p, job = prometheus_stack, "lastsuccess-test"
    first = monitoring.RunMetrics(
        job, "run-a", "tiny-random", "headrouter", "asr", p.pushgateway, served=False
    )
    assert first.finish(True)
    with urllib.request.urlopen(f"{p.pushgateway}/api/v1/metrics") as r:
        groups = json.load(r)["data"]
    (group,) = [g for g in groups if g["labels"].get("job") == job]
    pushed = float(group["headrouter_run_last_success_timestamp_seconds"]["metrics"][0]["value"])
    time.sleep(1.1)
    # A retry of the same run that fails, and a later run that fails.
    for run_id in ("run-a", "run-b"):
        failed = monitoring.RunMetrics(
            job, run_id, "tiny-random", "headrouter", "asr", p.pushgateway, served=False
        )
        assert failed.finish(False)
    p.wait_for(f'headrouter_run_success{{job="{job}", run_id="run-b"}} == 0')
    p.wait_for(f'headrouter_run_success{{job="{job}", run_id="run-a"}} == 0')
    (last,) = p.query(f'max by (job) (headrouter_run_last_success_timestamp_seconds{{job="{job}"}})')
    assert float(last["value"][1]) == pytest.approx(pushed, abs=1e-3)
    assert p.query(f'headrouter_run_last_success_timestamp_seconds{{job="{job}", run_id="run-b"}}') == []


def test_ray_actor_metrics_reach_prometheus_through_the_export_port(prometheus_stack):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray already initialised in this process by another test")
    p = prometheus_stack
    ray.init(
        address="local",  # a fresh local Ray even while another test's `ray start` head runs
        num_cpus=1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=p.ray_metrics_port,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        logging_level="WARNING",
    )
    try:

        @ray.remote(num_cpus=0.1)
        class Worker:
            def __init__(self):
                import monitoring

                self.metrics = monitoring.ChunkMetrics()

            def observe(self, rows):
                for row in rows:
                    self.metrics.observe(row)
                return self.metrics.backend

        worker = Worker.remote()
        rows = [chunk_row(i, length_s=4.0) for i in range(3)] + [
            chunk_row(3, status="error", error="too_long: chunk exceeds the model window")
        ]
        assert ray.get(worker.observe.remote(rows)) == "ray"
        p.wait_for('sum(headrouter_chunks_total{job="ray"}) == 4', timeout=90)
        p.wait_for('sum(headrouter_audio_seconds_total{job="ray"}) == 12', timeout=30)
        for spec in m.CHUNK_METRICS:
            if spec in (m.PEAK_MEMORY, m.BATCH_SPLITS, m.SLOT_STEPS, m.SLOT_BUSY_STEPS, m.SLOT_REFILLS):
                # no accelerator; no out-of-memory split happened; no continuous batching (static rows only)
                continue
            name = spec.name + ("_count" if spec.kind == "histogram" else "")
            assert p.query(f'{name}{{job="ray"}}'), f"no Ray samples for {name}"
        assert p.query('{__name__=~"ray_headrouter_.*"}') == [], "the ray_ prefix should be stripped"
        (err,) = p.query('sum(headrouter_errors_total{job="ray", kind="too_long"})')
        assert float(err["value"][1]) == 1
    finally:
        ray.shutdown()


def test_local_stack_command_starts_and_stops(tmp_path):
    if not shutil.which("prometheus"):
        pytest.skip("Debian prometheus missing")
    ports = [str(stack.free_port()) for _ in range(3)]
    cmd = [sys.executable, "-m", "monitoring.stack", "--no-ray", "--check", "--dir", str(tmp_path)]
    cmd += ["--prometheus-port", ports[0], "--pushgateway-port", ports[1], "--metrics-port", ports[2]]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert f"http://127.0.0.1:{ports[0]}" in out.stdout
    config = json.loads((tmp_path / "prometheus" / "prometheus.yml").read_text())
    assert {j["job_name"] for j in config["scrape_configs"]} == {"pushgateway", "headrouter", "ray"}
    with pytest.raises(OSError):  # stopped: nothing answers any more
        urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/-/ready", timeout=2)


def test_gpu_panel_reads_the_series_ray_exports_per_node(prometheus_stack, recorded):
    """The dashboard's GPU panel against what Ray 2.60's node reporter exports on a GPU node: its gauge names and
    GPU tag keys read from the installed Ray, served on the scraped Ray export port (this machine has no GPU)."""
    import prometheus_client
    from ray.dashboard.consts import GPU_TAG_KEYS
    from ray.dashboard.modules.reporter.reporter_agent import METRICS_GAUGES

    p = prometheus_stack
    panel = next(
        x for x in json.loads(DASHBOARD.read_text())["panels"] if x["title"].startswith("GPU utilization")
    )
    exprs = {t["refId"]: t["expr"] for t in panel["targets"]}
    names = ("node_gpus_utilization", "node_gram_used", "node_gram_available")
    assert all(name in METRICS_GAUGES for name in names)
    assert "ray_node_gpus_utilization" in exprs["A"]
    assert "ray_node_gram_used" in exprs["B"] and "ray_node_gram_available" in exprs["B"]
    registry = prometheus_client.CollectorRegistry()
    gauges = {
        name: prometheus_client.Gauge(f"ray_{name}", "as Ray exports it", GPU_TAG_KEYS, registry=registry)
        for name in ("node_gpus_utilization", "node_gram_used", "node_gram_available")
    }
    for index, (busy, used) in enumerate(((87.0, 60_000), (12.0, 20_000))):  # Ray records GRAM in MiB
        tags = dict.fromkeys(GPU_TAG_KEYS, "x") | {
            "ip": "10.0.0.7",
            "GpuIndex": str(index),
            "GpuDeviceName": "H200",
        }
        gauges["node_gpus_utilization"].labels(**tags).set(busy)
        gauges["node_gram_used"].labels(**tags).set(used)
        gauges["node_gram_available"].labels(**tags).set(140_000 - used)
    server, thread = prometheus_client.start_http_server(p.ray_metrics_port, "127.0.0.1", registry=registry)
    try:
        busy = p.wait_for(exprs["A"], timeout=30, predicate=lambda r: len(r) == 2)
        assert {s["metric"]["GpuIndex"]: float(s["value"][1]) for s in busy} == {"0": 87.0, "1": 12.0}
        memory = p.wait_for(exprs["B"], timeout=30, predicate=lambda r: len(r) == 2)
        got = {s["metric"]["GpuIndex"]: float(s["value"][1]) for s in memory}
        assert got == pytest.approx({"0": 100 * 60_000 / 140_000, "1": 100 * 20_000 / 140_000})
        assert _finite(p.query(exprs["C"]))  # our throughput beside them
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_call_time_shares_panel_adds_up_to_one(prometheus_stack, recorded):
    p = prometheus_stack
    panel = next(
        x for x in json.loads(DASHBOARD.read_text())["panels"] if x["title"].startswith("Share of model")
    )
    assert [t["legendFormat"] for t in panel["targets"]] == ["prepare", "prefill", "decode"]
    shares = []
    for target in panel["targets"]:
        (sample,) = p.wait_for(target["expr"], timeout=30, predicate=_finite)
        shares.append(float(sample["value"][1]))
    assert all(0 < s < 1 for s in shares) and sum(shares) == pytest.approx(1.0)
    ok = [r for r in recorded if r["status"] == "ok"]
    (prepare,) = p.query('sum(headrouter_prepare_seconds_sum{job="headrouter"})')
    assert float(prepare["value"][1]) == pytest.approx(sum(r["prepare_s"] for r in ok))


def test_slot_occupancy_panel_is_busy_over_slot_steps_per_actor(prometheus_stack, recorded):
    p = prometheus_stack
    panel = next(
        x for x in json.loads(DASHBOARD.read_text())["panels"] if x["title"].startswith("Decode slot")
    )
    occupancy, refills = panel["targets"]
    (sample,) = p.wait_for(occupancy["expr"], timeout=30, predicate=_finite)
    busy, slot_steps, per_stream = SLOT_STREAM
    assert float(sample["value"][1]) == pytest.approx(busy / slot_steps)
    assert sample["metric"]["actor"] == f"local-{os.getpid()}"  # this process recorded them
    (total,) = p.query('sum(headrouter_slot_refills_total{job="headrouter"})')
    assert float(total["value"][1]) == 2 * per_stream
    assert p.wait_for(refills["expr"], timeout=30, predicate=_finite)
