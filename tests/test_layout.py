"""The folder layout as the architecture: jobs/ holds short entry points that nothing else imports, headrouter/
never imports Ray, and monitoring/ imports without Ray. Imports are read with `ast`, so lazy imports inside
functions count too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# every top-level package except the entry points and the tests: the libraries
LIBRARIES = sorted(
    p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in ("jobs", "tests")
)
MAX_ENTRY_POINT_LINES = 150
LONG_ENTRY_POINTS: set[str] = set()  # every entry point is short


def imported_modules(path: Path) -> set[str]:
    """Absolute module names `path` imports: import / from-import statements and import_module("...") calls."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def _imports_of(packages, top: str) -> list[str]:
    hits = []
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in imported_modules(path):
                if module == top or module.startswith(top + "."):
                    hits.append(f"{path.relative_to(ROOT)} imports {module}")
    return hits


def test_libraries_are_found():
    assert {"headrouter", "pipeline", "workers", "monitoring", "bench", "quality"} <= set(LIBRARIES)


def test_nothing_outside_jobs_imports_jobs():
    assert _imports_of(LIBRARIES, "jobs") == []


def test_headrouter_imports_no_ray():
    assert _imports_of(["headrouter"], "ray") == []


def test_entry_points_are_short():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "jobs").glob("*.py")}
    assert "run.py" in sizes and "nightly.py" in sizes
    too_long = {
        name: n for name, n in sizes.items() if n > MAX_ENTRY_POINT_LINES and name not in LONG_ENTRY_POINTS
    }
    assert too_long == {}, f"jobs/ holds entry points only (<= {MAX_ENTRY_POINT_LINES} lines): {too_long}"


def test_monitoring_imports_without_ray():
    code = (
        "import sys\n"
        "class NoRay:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ray' or name.startswith('ray.'):\n"
        "            raise ImportError('ray is blocked')\n"
        "sys.meta_path.insert(0, NoRay())\n"
        "import monitoring, monitoring.report\n"
        "assert 'ray' not in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_import_reader_sees_lazy_and_dynamic_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "import os.path\n"
        "from . import sibling\n"
        "def f():\n"
        "    from ray.data import Dataset\n"
        "    importlib.import_module('jobs.run')\n"
    )
    assert imported_modules(src) == {"os.path", "ray.data", "jobs.run"}


def test_options_import_without_torch():
    """The options and the pipeline's driver modules load no torch (the actors do, when they load the model)."""
    code = (
        "import sys\n"
        "import headrouter.options, headrouter, pipeline.cli, pipeline.graph, pipeline.runner, jobs.run\n"
        "import workers.inference\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


# the method: routing math, baselines, budgets, profiles, options; calibration sits above both (it runs the engine)
METHOD_MODULES = ("routing", "baselines", "budget", "profiles", "options", "attention", "learned")


def test_the_method_never_imports_the_engine():
    """headrouter/engine/ (loop, KV buffers, graph capture, encoder batching, adapters, loading, features) imports
    the method; the method's modules never import the engine, so the arrow runs one way."""
    hits = []
    for name in METHOD_MODULES:
        path = ROOT / "headrouter" / f"{name}.py"
        assert path.exists(), path
        hits += [
            f"{name}.py imports {m}" for m in imported_modules(path) if m.startswith("headrouter.engine")
        ]
    assert hits == []


def test_the_engine_has_a_folder_of_its_own():
    engine = {p.stem for p in (ROOT / "headrouter" / "engine").glob("*.py")}
    assert {
        "lalm",
        "loop",
        "owned",
        "static_cache",
        "graphs",
        "encoder",
        "loading",
        "audio",
        "hooks",
    } <= engine
    assert (ROOT / "headrouter" / "engine" / "adapters").is_dir()
    assert not (set(METHOD_MODULES) & engine)
