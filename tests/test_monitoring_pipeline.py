"""The real pipeline (`python -m jobs.run`, tiny-random) on a Ray node whose metrics port Prometheus scrapes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from monitoring import metrics as m

REPO = Path(__file__).resolve().parents[1]
JOB = "headrouter-nightly-e2e"


def _inputs(root: Path) -> Path:
    root.mkdir()
    sr = 16000
    t = np.arange(int(1.5 * sr)) / sr
    sf.write(root / "a.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype("float32"), sr)
    sf.write(root / "b.flac", (0.2 * np.sin(2 * np.pi * 330 * t[:sr])).astype("float32"), 22050)
    (root / "c.wav").write_bytes(b"RIFF1234WAVEjunk" * 10)  # corrupt: one error row
    return root


def test_pipeline_run_exports_chunk_and_run_metrics(prometheus_stack, tmp_path):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray already initialised in this process by another test")
    p = prometheus_stack
    ray.init(
        address="local",  # a fresh local Ray even while another test's `ray start` head runs
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=p.ray_metrics_port,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        logging_level="WARNING",
    )
    try:
        address = ray.get_runtime_context().gcs_address
        cmd = [sys.executable, "-m", "jobs.run", "--input", str(_inputs(tmp_path / "in"))]
        cmd += [
            "--output",
            str(tmp_path / "out"),
            "--model",
            "tiny-random",
            "--task",
            "asr",
            "--workers",
            "1",
        ]
        cmd += ["--max-error-fraction", "0.5", "--address", address, "--run-id", "e2e-1", "--job-name", JOB]
        cmd += ["--shadow-fraction", "1"]  # every chunk shadowed: the shadow metrics reach Prometheus too
        cmd += ["--pushgateway", p.pushgateway, "--metrics-port", str(p.metrics_port)]
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stderr[-3000:]

        run = f'job="{JOB}", run_id="e2e-1"'
        p.wait_for(f"headrouter_run_success{{{run}}} == 1")
        (errors,) = p.query(f'headrouter_run_chunks{{{run}, status="error"}}')
        (oks,) = p.query(f'headrouter_run_chunks{{{run}, status="ok"}}')
        assert (float(errors["value"][1]), float(oks["value"][1])) == (1, 2)
        assert p.query(f"headrouter_run_last_success_timestamp_seconds{{{run}}}")

        # The actors' ray.util.metrics, exported by the node and scraped with the ray_ prefix stripped.
        p.wait_for('sum(headrouter_chunks_total{job="ray", model="tiny-random"}) == 3', timeout=60)
        for spec in m.CHUNK_METRICS:
            # no accelerator, no out-of-memory split, no silence skipped (off by default), no continuous batching
            # (--slots; its counters are served and read in test_monitoring_prometheus): Ray exports no zeros
            if spec in (
                m.PEAK_MEMORY,
                m.BATCH_SPLITS,
                m.SKIPPED_SECONDS,
                m.SLOT_STEPS,
                m.SLOT_BUSY_STEPS,
                m.SLOT_REFILLS,
            ):
                continue
            name = spec.name + ("_count" if spec.kind == "histogram" else "")
            assert p.query(f'{name}{{job="ray"}}'), f"the pipeline exported no {name}"
        (kind,) = p.query('sum by (kind) (headrouter_errors_total{job="ray"})')
        assert kind["metric"]["kind"] == "decode_error"
        (secs,) = p.query('sum(headrouter_audio_seconds_total{job="ray"})')
        assert float(secs["value"][1]) == pytest.approx(1.5 + 16000 / 22050, abs=0.01)
        (pushed,) = p.query(f"headrouter_run_audio_seconds{{{run}}}")  # the driver's total agrees
        assert float(pushed["value"][1]) == pytest.approx(float(secs["value"][1]))

        # Every dashboard and recording-rule expression answers (rates may be 0 after a single batch).
        dashboard = json.loads((REPO / "monitoring/grafana/headrouter-dashboard.json").read_text())
        import yaml

        exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
        exprs += [
            r["expr"]
            for g in yaml.safe_load((REPO / "monitoring/alerts.yml").read_text())["groups"]
            for r in g["rules"]
            if "record" in r
        ]
        # rate() needs two scrapes that saw the series: on a loaded machine give it a few more intervals
        # except what this machine and run cannot have: accelerator memory, Ray's GPU node gauges (no GPU), the
        # continuous-batching slot counters (no --slots); test_monitoring_prometheus serves and reads those
        unavailable = ("accelerator", "ray_node_gpus", "ray_node_gram", "headrouter_slot_")
        empty = [e for e in exprs if not any(u in e for u in unavailable) and not _answers(p, e, timeout=30)]
        assert not empty, empty
    finally:
        ray.shutdown()


def _answers(p, expr: str, timeout: float) -> bool:
    try:
        return bool(p.wait_for(expr, timeout=timeout))
    except TimeoutError:
        return False
