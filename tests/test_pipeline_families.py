"""`python -m jobs.run --model <tiny alias>` end to end for every family (embedded Ray, one small run each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.families import FAMILIES

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("alias", FAMILIES)
def test_jobs_run_answers_a_short_archive(alias, tmp_path):
    from pipeline import read_results

    archive = tmp_path / "in"
    archive.mkdir()
    t = np.arange(int(1.5 * 16000)) / 16000
    sf.write(archive / "a.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype("float32"), 16000)
    sf.write(archive / "b.flac", (0.2 * np.sin(2 * np.pi * 330 * t[:16000])).astype("float32"), 22050)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.run", "--model", alias, "--input", str(archive), "--output", str(out)]
    cmd += ["--method", "headrouter", "--retain", "0.5", "--workers", "1", "--max-new-tokens", "3"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HEADROUTER_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    results = read_results(str(out))
    assert results.files.num_rows == 2
    chunks = results.chunks.to_pylist()
    assert chunks and all(not c.get("error") for c in chunks), chunks
