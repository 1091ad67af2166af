"""`pip install .`: the wheel holds every package and its data, and the installed headrouter imports outside
the checkout (offline: the wheel is built without isolation, the fresh venv reuses this venv's dependencies)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("headrouter", "pipeline", "workers", "monitoring", "bench", "quality", "jobs")


def test_wheel_installs_and_imports_outside_the_checkout(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing (build/, *.egg-info) in the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, cwd=tmp_path, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"{p}/__init__.py" for p in PACKAGES} <= names
    assert {"monitoring/alerts.yml", "monitoring/grafana/headrouter-dashboard.json", "bench/gpu.sh"} <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())  # fmt: skip
    # this venv's dependencies (torch, transformers, ...), after the fresh venv's own site-packages
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, timeout=300)  # fmt: skip
    probe = (
        "import headrouter, jobs.run, monitoring.stack; from headrouter import load_lalm; "
        "print(headrouter.__file__); print(monitoring.stack.ALERTS.is_file())"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing from the checkout
    out = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    where, alerts = out.stdout.split()
    assert Path(where).is_relative_to(site) and alerts == "True"
