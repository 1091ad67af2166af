"""A local monitoring stack on loopback: Prometheus + Pushgateway (+ a Ray head), in one command.

    python -m monitoring.stack [--dir out/stack] [--no-ray]

Prometheus scrapes the Pushgateway (batch runs), a job's `--metrics-port` and the Ray head's metrics export port,
strips Ray's `ray_` prefix from headrouter metrics, and loads monitoring/alerts.yml. Ctrl-C stops everything started.
The helpers here also back the test fixtures (tests/fixtures/prometheus.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["free_port", "prometheus_config", "start_prometheus", "start_pushgateway", "stop", "wait_ready"]

log = logging.getLogger("monitoring")

ALERTS = Path(__file__).with_name("alerts.yml")


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_config(
    pushgateway: str, metrics: list[str], ray: list[str], interval: str = "15s", rules: Path | None = ALERTS
) -> dict:
    """Prometheus config (as a dict; JSON is valid YAML) for host:port targets of each kind."""
    jobs = [
        # honor_labels keeps the pushed job/run_id labels instead of the scrape job's.
        {"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": [pushgateway]}]},
        {"job_name": "headrouter", "static_configs": [{"targets": metrics}]},
        {
            "job_name": "ray",
            "static_configs": [{"targets": ray}],
            "metric_relabel_configs": [
                {
                    "source_labels": ["__name__"],
                    "regex": "ray_(headrouter_.*)",
                    "target_label": "__name__",
                    "replacement": "$1",
                }
            ],
        },
    ]
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": jobs,
    }
    if rules is not None:
        config["rule_files"] = [str(rules)]
    return config


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen:
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def start_pushgateway(port: int, data_dir: Path) -> subprocess.Popen:
    """Start a Pushgateway on 127.0.0.1:port persisting to data_dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        shutil.which("prometheus-pushgateway") or "pushgateway",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--persistence.file={data_dir / 'pushgateway.db'}",
        "--persistence.interval=5s",
    ]
    return _spawn(argv, data_dir / "pushgateway.log")


def start_prometheus(port: int, config: dict, data_dir: Path) -> subprocess.Popen:
    """Start Prometheus on 127.0.0.1:port with config, storing its TSDB under data_dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2))
    argv = [
        shutil.which("prometheus") or "prometheus",
        f"--config.file={config_path}",
        f"--storage.tsdb.path={data_dir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    return _spawn(argv, data_dir / "prometheus.log")


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Poll url until it answers 200; raise if proc exits or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process group started by _spawn, SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def _start_ray_head(metrics_port: int, data_dir: Path) -> subprocess.Popen:
    ray = Path(sys.executable).with_name("ray")
    argv = [
        str(ray),
        "start",
        "--head",
        "--block",  # stays in the foreground, so stopping this process stops the head it started
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--port={free_port()}",
        f"--metrics-export-port={metrics_port}",
    ]
    env = dict(os.environ, PATH=f"{ray.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = open(data_dir / "ray.log", "ab")  # noqa: SIM115
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m monitoring.stack", description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path("out/stack"), help="data and logs (default out/stack)")
    p.add_argument("--prometheus-port", type=int, default=9090)
    p.add_argument("--pushgateway-port", type=int, default=9091)
    p.add_argument(
        "--metrics-port", type=int, default=8000, help="port a local `jobs.run --metrics-port` serves"
    )
    p.add_argument("--ray-metrics-port", type=int, default=8080, help="the Ray head's metrics export port")
    p.add_argument("--no-ray", action="store_true", help="do not start a Ray head")
    p.add_argument("--check", action="store_true", help="start, wait until ready, print, stop (a smoke test)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    procs: list[subprocess.Popen] = []
    try:
        gw = f"127.0.0.1:{args.pushgateway_port}"
        procs.append(start_pushgateway(args.pushgateway_port, args.dir / "pushgateway"))
        wait_ready(f"http://{gw}/-/ready", procs[-1])
        config = prometheus_config(
            gw, [f"127.0.0.1:{args.metrics_port}"], [f"127.0.0.1:{args.ray_metrics_port}"], interval="5s"
        )
        procs.append(start_prometheus(args.prometheus_port, config, args.dir / "prometheus"))
        wait_ready(f"http://127.0.0.1:{args.prometheus_port}/-/ready", procs[-1])
        if not args.no_ray:
            procs.append(_start_ray_head(args.ray_metrics_port, args.dir))
            wait_ready(f"http://127.0.0.1:{args.ray_metrics_port}/metrics", procs[-1], timeout=120)
        print(f"Prometheus   http://127.0.0.1:{args.prometheus_port}  (rules: {ALERTS})")
        print(f"Pushgateway  http://{gw}   -> python -m jobs.run ... --pushgateway http://{gw}")
        print(f"local job    python -m jobs.run ... --metrics-port {args.metrics_port}")
        if not args.no_ray:
            print(
                "Ray head     127.0.0.1, dashboard http://127.0.0.1:8265  -> python -m jobs.run ... --address auto"
            )
        if args.check:
            return 0
        print("Ctrl-C stops the stack.")
        while all(proc.poll() is None for proc in procs):
            time.sleep(1)
        log.error("a server exited; see the logs under %s", args.dir)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in reversed(procs):
            stop(proc, timeout=60)


if __name__ == "__main__":
    sys.exit(main())
