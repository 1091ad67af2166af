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

__all__ = ["ROUTERS", "headroom_table", "paired_difference"]

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
