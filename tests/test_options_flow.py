"""One PruneOptions from the command line to the hooks: built once by the parser, carried whole (never copied field
by field) by RunOptions and WorkerOptions, and what the pruning hooks of the real tiny model receive; and the
driver of a run never loads torch."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

import headrouter.engine.hooks as hooks
from pipeline.cli import parse_run_args
from pipeline.graph import worker_options
from pipeline.sink import CHUNK_SCHEMA
from tests.test_worker_batching import _segments
from workers.inference import InferenceWorker

ROOT = Path(__file__).resolve().parents[1]


def test_the_hooks_receive_the_options_the_command_line_built(monkeypatch):
    argv = [
        "--input",
        "in",
        "--output",
        "out",
        "--retain",
        "0.35",
        "--layer",
        "1",
        "--method",
        "headrouter-hard",
    ]
    request = parse_run_args([*argv, "--shadow-fraction", "1", "--max-new-tokens", "2"])
    prune = request.opts.prune
    assert (prune.method, prune.retain, prune.layer) == ("headrouter-hard", 0.35, 1)
    opts = worker_options(request.opts)
    assert opts.prune is prune  # carried, not rebuilt
    shipped = pickle.loads(pickle.dumps(opts))  # what a Ray actor receives
    assert shipped.prune == prune
    seen = []
    apply_pruning = hooks.apply_pruning

    def spy(model, layers, final_norm, ids, options, *args, **kwargs):
        seen.append(options)
        return apply_pruning(model, layers, final_norm, ids, options, *args, **kwargs)

    monkeypatch.setattr(hooks, "apply_pruning", spy)
    worker = InferenceWorker(shipped, CHUNK_SCHEMA)
    rows = worker.infer(_segments([1.0, 2.0]))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert (
        seen == [shipped.prune] and seen[0] is shipped.prune
    )  # the pruned call; the shadow call has no hooks
    assert all(
        r["retain"] == 0.35 and r["method"] == "headrouter-hard" and r["budget"] == "fixed" for r in rows
    )
    assert [r["kept_tokens"] for r in rows] == [int(r["audio_tokens"] * 0.35) for r in rows]
    assert all(r["shadow_text"] is not None for r in rows)  # the shadow ran unpruned, off the same options


def test_default_retain_and_layer_are_prune_options_own():
    from headrouter.options import PruneOptions

    prune = parse_run_args(["--input", "in", "--output", "out"]).opts.prune
    assert prune == PruneOptions()


def _loose_prune_options(path: Path) -> list[int]:
    """Lines of `path` that call PruneOptions(...) (building one from loose fields instead of carrying the run's)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name == "PruneOptions":
                lines.append(node.lineno)
    return lines


def test_only_the_command_line_parser_builds_prune_options(tmp_path):
    found = {str(p.relative_to(ROOT)): lines for pkg in ("workers", "pipeline") for p in (ROOT / pkg).rglob("*.py")
             if (lines := _loose_prune_options(p))}  # fmt: skip
    assert list(found) == ["pipeline/cli.py"] and len(found["pipeline/cli.py"]) == 1, found
    # the check sees one: an attribute call, as a module would write it
    bad = tmp_path / "bad.py"
    bad.write_text("import headrouter.options as o\n\nx = o.PruneOptions(retain=0.5)\n")
    assert _loose_prune_options(bad) == [3]


def test_the_driver_of_a_run_never_imports_torch(tmp_path):
    """jobs.run's process (the driver) lists, plans and commits; only the actors load the model."""
    archive = tmp_path / "in"
    archive.mkdir()
    import soundfile as sf

    sf.write(archive / "a.wav", (0.1 * np.sin(np.arange(16000) / 8.0)).astype(np.float32), 16000)
    code = (
        "import sys, jobs.run\n"
        f"rc = jobs.run.main(['--input', {str(archive)!r}, '--output', {str(tmp_path / 'out')!r}, "
        "'--workers', '1', '--max-new-tokens', '2'])\n"
        "assert rc == 0, rc\n"
        "print('TORCH', 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "TORCH False False" in res.stdout, res.stdout[-2000:]


def test_no_cuda_graphs_reaches_the_engine_the_worker_loads():
    from headrouter.engine.loop import EngineOptions

    base = ["--input", "in", "--output", "out"]
    assert worker_options(parse_run_args(base).opts).cuda_graphs is True
    opts = worker_options(parse_run_args([*base, "--no-cuda-graphs"]).opts)
    assert opts.cuda_graphs is False
    worker = InferenceWorker(pickle.loads(pickle.dumps(opts)), CHUNK_SCHEMA)
    assert worker.lalm.engine_options == EngineOptions(cuda_graphs=False)
