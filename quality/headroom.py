"""How much of the oracle router's headroom each router recovers, with paired bootstrap intervals.

For one split's per-sample results (`samples.csv.gz` of `jobs.eval`) and one retain ratio:
  headroom recovered = (router - norouter) / (oracle - norouter), in "% of vanilla" averages;
  difference(A, B) = avg(A) - avg(B) with a paired, per-task-stratified bootstrap 95% interval (the same resampled
  samples for A, B and vanilla; the conventions of `quality.metrics.summarize`).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from quality.metrics import _average, _Task
from quality.scoring import normalize

__all__ = ["ROUTERS", "headroom_table", "paired_difference", "routing_figure"]

ROUTERS = ("headrouter", "headrouter-hard", "headrouter-learned")


def _configs(samples: list[dict]) -> dict:
    configs: dict = defaultdict(lambda: defaultdict(dict))
    for r in samples:
        configs[(r["method"], float(r["retain"]))][r["task"]][r["id"]] = r
    return configs


def paired_difference(
    samples: list[dict], a: str, b: str, retain: float, resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """(avg % vanilla of a - that of b, 2.5th, 97.5th bootstrap percentiles) at `retain`."""
    configs = _configs(samples)
    vanilla = next(v for k, v in configs.items() if k[0] == "vanilla")
    tasks = sorted(vanilla)
    ids = {t: sorted(vanilla[t]) for t in tasks}
    classes = {t: sorted({normalize(r["answer"]) for r in vanilla[t].values()}) for t in tasks}

    def arrays(cfg):
        return {t: _Task(t, [cfg[t][i] for i in ids[t]], classes[t]) for t in tasks}

    v, xa, xb = arrays(vanilla), arrays(configs[(a, retain)]), arrays(configs[(b, retain)])

    def avg(x, vs, pick=None):
        return _average({t: x[t].value(None if pick is None else pick[t]) for t in tasks}, vs)

    v_full = {t: v[t].value() for t in tasks}
    point = avg(xa, v_full) - avg(xb, v_full)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        pick = {t: rng.integers(0, len(ids[t]), size=len(ids[t])) for t in tasks}
        vs = {t: v[t].value(pick[t]) for t in tasks}
        d = avg(xa, vs, pick) - avg(xb, vs, pick)
        if np.isfinite(d):
            diffs.append(d)
    return point, float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def headroom_table(
    table: list[dict], samples: list[dict], resamples: int = 1000, seed: int = 0
) -> list[dict]:
    """Per retain: oracle - norouter headroom, and per router its average, share recovered and paired
    difference to the paper's router (`headrouter`); `table` is `quality.metrics.summarize`'s output."""
    avg = {(r["method"], r["retain"]): r["avg_pct_vanilla"] for r in table}
    out = []
    for retain in sorted({r["retain"] for r in table if r["method"] == "headrouter-oracle"}, reverse=True):
        room = avg[("headrouter-oracle", retain)] - avg[("headrouter-norouter", retain)]
        for router in ROUTERS:
            if (router, retain) not in avg:
                continue
            gain = avg[(router, retain)] - avg[("headrouter-norouter", retain)]
            diff = (
                paired_difference(samples, router, "headrouter", retain, resamples, seed)
                if router != "headrouter"
                else (0.0, 0.0, 0.0)
            )
            out.append(
                {
                    "retain": retain,
                    "router": router,
                    "avg": avg[(router, retain)],
                    "headroom": room,
                    "recovered": gain / room if room > 0 else float("nan"),
                    "vs_paper": diff,
                }
            )
    return out


def routing_figure(samples: list[dict], path, title: str = "") -> None:
    """Mean alpha (sem, uni, aco) per task for each router present (the paper's Figure 7, one panel per router)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routers = [m for m in (*ROUTERS, "headrouter-oracle") if any(r["method"] == m for r in samples)]
    cats = {r["task"]: r["category"] for r in samples}
    tasks = sorted(cats, key=lambda t: (cats[t] != "semantic", t))
    fig, axes = plt.subplots(1, len(routers), figsize=(3.6 * len(routers), 3.6), sharey=True, squeeze=False)
    for ax, router in zip(axes[0], routers):
        rows = [r for r in samples if r["method"] == router and r["alpha_semantic"] is not None]
        bottom = np.zeros(len(tasks))
        for key, label in (
            ("alpha_semantic", "semantic"),
            ("alpha_uniform", "uniform"),
            ("alpha_acoustic", "acoustic"),
        ):
            vals = np.array([np.mean([r[key] for r in rows if r["task"] == t] or [0.0]) for t in tasks])
            ax.bar(tasks, vals, bottom=bottom, label=label)
            bottom += vals
        ax.set_title(router, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    axes[0][0].set_ylabel("mean alpha (all retain ratios)")
    axes[0][-1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
