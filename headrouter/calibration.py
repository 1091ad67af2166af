"""Calibrate HeadRouter profiles for a model: head-ablation head weights, routing centers and bandwidth.

Run it with `python -m jobs.calibrate` (see that module for the command line).
Manifest rows need `audio`, `category` (semantic|acoustic), `answer` and `prompt` (or `question` and `choices`).
Per category, `--ablation-samples` rows are drawn with a seeded permutation (the first `--routing-samples` of
them also give the routing statistics). Everything else is deterministic, so one seed gives one file.

How ablation becomes weights (per category c, H query heads of layer M-1's probe):
1. For each sample, the answer's teacher-forced negative log-likelihood per token (answer tokens + <|im_end|>,
   forced greedy decoding) is measured with audio tokens pruned at layer M to `--retain` by HeadRouter with
   the Frame pre-filter, once with uniform head weights (NLL_uni) and once per head h with head h's weight set
   to zero and the others uniform (NLL_-h).
2. The ablation score is a_c[h] = mean over the category's samples of (NLL_-h - NLL_uni): how much worse the
   kept tokens serve the answer when head h's probe no longer votes.
3. z = (a_c - mean(a_c)) / std(a_c) and w_c = H * softmax(z / T) (`--temperature` T, default 1): a head whose
   removal hurts one standard deviation more than average gets e^(1/T) times the weight; std 0 -> uniform.
Centers and bandwidth: the selectivity spread (eq. 11) of `--routing-samples` samples per category;
mu_sem and mu_aco are the category means, mu_uni their midpoint, and sigma_G the pooled within-category
standard deviation sqrt((var_sem + var_aco) / 2) (at least 1e-4).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("headrouter")

__all__ = ["CalibrateOptions", "ablation_weights", "calibrate", "pooled_bandwidth"]


@dataclass(frozen=True)
class CalibrateOptions:
    model: str
    manifest: str
    out: str | None = None
    seed: int = 0
    ablation_samples: int = 24
    routing_samples: int = 10
    retain: float = 0.4
    layer: int = 2
    prefilter: float = 2.0
    temperature: float = 1.0
    threads: int = 1  # torch CPU threads (more measured 25x slower on 2 shared cores)


def ablation_weights(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Ablation scores a [H] -> head weights H * softmax(zscore(a) / T) (uniform when all scores are equal)."""
    scores = np.asarray(scores, dtype=np.float64)
    std = scores.std()
    if not np.isfinite(std) or std < 1e-12:
        return np.ones_like(scores)
    z = (scores - scores.mean()) / std / temperature
    e = np.exp(z - z.max())
    return scores.size * e / e.sum()


def pooled_bandwidth(semantic: list[float], acoustic: list[float]) -> float:
    """sigma_G = sqrt((var_sem + var_aco) / 2), at least 1e-4."""
    return max(float(np.sqrt((np.var(semantic) + np.var(acoustic)) / 2)), 1e-4)


def _fixed_router(weights, prefilter: float):
    """A HeadRouter that always uses `weights`: both profiles equal, hard routing, uniform center unreachable."""
    from headrouter import HeadRouter, Profiles

    w = tuple(float(x) for x in weights)
    # spread is a std of values in [0, 1], so <= 0.5: the nearest center is always 0.0 (a profile equal to w)
    profiles = Profiles(semantic=w, acoustic=w, centers=(0.0, 10.0, 0.0), bandwidth=1.0)
    return HeadRouter(profiles, prefilter=prefilter, routing="hard")


def _answer_nll(lalm, inputs: dict, answer_ids: list[int], options, router) -> float:
    """Mean NLL per token of `answer_ids` under forced greedy decoding with pruning hooks on."""
    import torch

    start = int(inputs["input_ids"].shape[1])
    handle = lalm.prune_hooks(options, router)
    try:
        with torch.inference_mode():
            out = lalm.model.generate(
                **inputs,
                max_new_tokens=len(answer_ids),
                do_sample=False,
                num_beams=1,
                use_cache=True,
                prefix_allowed_tokens_fn=lambda _b, ids: [
                    answer_ids[min(ids.shape[-1] - start, len(answer_ids) - 1)]
                ],
                output_logits=True,
                return_dict_in_generate=True,
            )
    finally:
        if handle is not None:
            handle.remove()
    logits = torch.stack(out.logits, dim=1)[0].float()  # [n, V]
    n = logits.shape[0]
    logp = torch.log_softmax(logits, dim=-1)[torch.arange(n), torch.tensor(answer_ids[:n])]  # [n]
    return float(-logp.mean())


def _load_rows(manifest: Path, seed: int, per_category: int) -> dict[str, list[dict]]:
    import soundfile as sf

    from headrouter.prompt import task_prompt

    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    order = np.random.default_rng(seed).permutation(len(rows))
    picked: dict[str, list[dict]] = {"semantic": [], "acoustic": []}
    for i in order:
        row = rows[int(i)]
        bucket = picked.get(row.get("category"))
        if bucket is None or len(bucket) >= per_category:
            continue
        path = Path(row["audio"])
        audio, sr = sf.read(path if path.is_absolute() else manifest.parent / path, dtype="float32")
        if sr != 16000:
            raise ValueError(f"{path}: {sr} Hz; calibration reads 16 kHz mono audio (resample it first)")
        prompt = row.get("prompt") or task_prompt("qa", row["question"], row.get("choices"))
        bucket.append({**row, "_audio": audio, "_sr": sr, "_prompt": prompt})
    for cat, bucket in picked.items():
        if not bucket:
            raise ValueError(f"{manifest} has no {cat} rows")
    return picked


def calibrate(opts: CalibrateOptions):
    """Run calibration and return the Profiles (also saved to `opts.out` or the model folder)."""
    import torch

    from headrouter import Profiles, PruneOptions, load_lalm
    from headrouter.prompt import IM_END

    torch.manual_seed(opts.seed)
    torch.set_num_threads(opts.threads)
    lalm = load_lalm(opts.model)
    heads = lalm.num_heads
    rows = _load_rows(Path(opts.manifest), opts.seed, max(opts.ablation_samples, opts.routing_samples))
    options = PruneOptions(
        method="headrouter", retain=opts.retain, layer=opts.layer, prefilter=opts.prefilter
    )
    eos = lalm.tokenizer.convert_tokens_to_ids(IM_END)
    routers = [_fixed_router(np.ones(heads), opts.prefilter)]
    for h in range(heads):
        w = np.ones(heads)
        w[h] = 0.0
        routers.append(_fixed_router(w, opts.prefilter))

    stats: dict[str, dict] = {}
    for cat, bucket in rows.items():
        deltas, spreads = [], []
        for j, row in enumerate(bucket[: opts.ablation_samples]):
            inputs = lalm.prepare(row["_audio"], row["_prompt"], j, row["_sr"])
            answer_ids = [*lalm.tokenizer(row["answer"], add_special_tokens=False)["input_ids"], eos]
            nll = [_answer_nll(lalm, inputs, answer_ids, options, r) for r in routers]  # [1 + H]
            deltas.append(np.array(nll[1:]) - nll[0])
        for row in bucket[: opts.routing_samples]:
            norouter = PruneOptions(method="headrouter-norouter", retain=opts.retain, layer=opts.layer)
            _, record = lalm.prefill_logits(row["_audio"], row["_prompt"], norouter)
            spreads.append(float(record.selection.spread))
        scores = np.mean(deltas, axis=0)  # [H]
        stats[cat] = {
            "ablation": [float(x) for x in scores],
            "weights": [float(x) for x in ablation_weights(scores, opts.temperature)],
            "spreads": spreads,
            "ablation_samples": len(deltas),
            "ids": [r.get("id") for r in bucket[: opts.ablation_samples]],
        }
        log.info("%s: ablation %s spread %.4f", cat, stats[cat]["ablation"], np.mean(spreads))

    mu_sem, mu_aco = (
        float(np.mean(stats["semantic"]["spreads"])),
        float(np.mean(stats["acoustic"]["spreads"])),
    )
    profiles = Profiles(
        semantic=tuple(stats["semantic"]["weights"]),
        acoustic=tuple(stats["acoustic"]["weights"]),
        centers=(mu_sem, (mu_sem + mu_aco) / 2, mu_aco),
        bandwidth=pooled_bandwidth(stats["semantic"]["spreads"], stats["acoustic"]["spreads"]),
        model_id=opts.model,
        layer=opts.layer,
        calibration={
            "method": "head-ablation",
            "manifest": Path(opts.manifest).name,
            "seed": opts.seed,
            "retain": opts.retain,
            "prefilter": opts.prefilter,
            "temperature": opts.temperature,
            "semantic": stats["semantic"],
            "acoustic": stats["acoustic"],
        },
    )
    out = Path(opts.out) if opts.out else (lalm.folder / "headrouter_profiles.json" if lalm.folder else None)
    if out is None:
        raise ValueError("--out is required for a model that is not a local folder")
    profiles.save(out)
    Profiles.load(out, num_heads=heads)  # the loader's validation
    log.info("wrote %s: centers %s bandwidth %s", out, profiles.centers, profiles.bandwidth)
    return profiles
