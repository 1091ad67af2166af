"""Does shadow agreement track quality? `jobs.tune` outputs on a manifest with reference answers, scored.

For each retain and task family: the agreement of the pruned answers with the unpruned ones (what a shadow run and
`jobs.tune` see without references) beside the true change in score against the reference answers (what they
stand for). And on a separate split: whether the retain `jobs.tune` recommended keeps >= target of vanilla's score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from quality.agreement import agreement, mean_interval
from quality.metrics import score_kept
from quality.scoring import score

__all__ = ["holdout_check", "relation_table", "scored_rows"]


def scored_rows(tune_dir: str | Path, manifest: str | Path) -> list[dict]:
    """jobs.tune's chunk rows joined with the manifest (category, answer) and scored against the answer."""
    import pyarrow.parquet as pq

    refs = {}
    for line in Path(manifest).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            refs[row["id"]] = row
    rows = []
    for r in pq.read_table(Path(tune_dir) / "chunks.parquet").to_pylist():
        ref = refs.get(r["id"]) or refs.get(Path(r["id"]).stem)
        if ref is None or r["status"] != "ok":
            continue
        rows.append(dict(r, family=ref.get("category"), score=score(ref, r["text"])))
    return rows


def relation_table(rows: list[dict], seed: int = 0) -> list[dict]:
    """Per retain and family (and "all"): agreement with vanilla, score change, score as a share of vanilla's."""
    vanilla = {r["id"]: r for r in rows if r["method"] == "vanilla"}
    out = []
    for retain in sorted({r["retain"] for r in rows if r["method"] != "vanilla"}, reverse=True):
        pruned = [
            r for r in rows if r["method"] != "vanilla" and r["retain"] == retain and r["id"] in vanilla
        ]
        for family in ["all", *sorted({r["family"] for r in pruned})]:
            part = [r for r in pruned if family == "all" or r["family"] == family]
            agree = [agreement(str(r["task"]), r["text"], vanilla[r["id"]]["text"]) for r in part]
            change = [r["score"] - vanilla[r["id"]]["score"] for r in part]
            base = float(np.mean([vanilla[r["id"]]["score"] for r in part]))
            mean, lo, hi = mean_interval(agree, seed=seed)
            out.append(
                dict(
                    retain=retain, family=family, chunks=len(part), agreement=mean, agreement_low=lo,
                    agreement_high=hi, disagreement=1 - mean, score_change=float(np.mean(change)),
                    abs_score_change=float(np.mean(np.abs(change))),
                    share_of_vanilla=(base + float(np.mean(change))) / base if base else None,
                )
            )  # fmt: skip
    return out


def holdout_check(
    rows: list[dict], retain: float, target: float, resamples: int = 2000, seed: int = 0
) -> dict:
    """Score at `retain` as a share of vanilla's on a separate split, with a paired bootstrap 95% interval.

    Retain 1.0 keeps every token and reproduces vanilla exactly (tests/test_hooks.py): its rows are vanilla's."""
    vanilla = {r["id"]: r["score"] for r in rows if r["method"] == "vanilla"}
    pruned = [r for r in rows if r["retain"] == retain and (r["method"] != "vanilla" or retain == 1.0)]
    pairs = [(r["score"], vanilla[r["id"]]) for r in pruned if r["id"] in vanilla]
    p = np.asarray(pairs, dtype=np.float64)  # [n, 2]: pruned, vanilla
    share, lo, hi = score_kept(p[:, 0], p[:, 1], resamples, seed)
    return dict(retain=retain, target=target, chunks=len(p), vanilla_score=float(p[:, 1].mean()),
                pruned_score=float(p[:, 0].mean()), share_of_vanilla=share, low=lo, high=hi,
                kept=share is not None and share >= target)  # fmt: skip


def markdown(relation: list[dict], holdouts: list[dict]) -> str:
    lines = [
        "| retain | family | chunks | agreement (95% CI) | 1 - agreement | score change | score, % of vanilla |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in relation:
        lines.append(
            f"| {r['retain']:g} | {r['family']} | {r['chunks']} | {r['agreement']:.3f} ({r['agreement_low']:.3f}-"
            f"{r['agreement_high']:.3f}) | {r['disagreement']:.3f} | {r['score_change']:+.3f} | "
            f"{100 * r['share_of_vanilla']:.1f}% |"
        )
    if holdouts:
        lines += [
            "",
            "| target | recommended retain | score on the separate split, % of vanilla (95% CI) | clips | kept >= target |",
            "|---|---|---|---|---|",
        ]
        for h in holdouts:
            lines.append(
                f"| {h['target']:g} | {h['retain']:g} | {100 * h['share_of_vanilla']:.1f}% ({100 * h['low']:.1f}-"
                f"{100 * h['high']:.1f}%) | {h['chunks']} | {'yes' if h['kept'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"
