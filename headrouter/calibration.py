"""Calibrate HeadRouter profiles for a model: head-ablation head weights, routing centers, bandwidth, learned router.

Run it with `python -m jobs.calibrate` (see that module for the command line).
Manifest rows need `audio`, `category` (semantic|acoustic), `answer` and `prompt` (or `question` and `choices`).
Per category, rows are drawn with a seeded permutation: the first `--ablation-samples` are ablated, the first
`--routing-samples` give the routing centers, the first `--router-samples` train the learned router. Everything
else is deterministic, so one seed (and one device/dtype/thread count) gives one file.

One forward per sample: the prompt followed by the answer (teacher forcing) runs once through the audio encoder
and layers < M, which no ablation changes (their attention is causal and unpruned). Every ablation then only
re-selects the audio tokens at layer M from the same probe and runs layers M..L-1 on the kept positions (kept
tokens keep their original positions), the final norm and the LM head on the answer positions alone; the
ablations of one sample run as one batch (`--ablation-batch`). This equals, up to float rounding, pruned prefill
followed by forced greedy decoding of the answer (tested).

How ablation becomes weights (per category, H query heads):
1. Per sample, the answer's mean NLL per token (answer tokens + the family's end of answer, `LALM.answer_end_id`:
   <|im_end|> for the Qwen families, <|end|> for Phi-4-multimodal, </s> for Voxtral) with audio pruned at layer M to
   `--retain` by HeadRouter with the Frame pre-filter, with uniform head weights (NLL_uni) and once per head h
   with h's weight set to zero (NLL_-h); delta[s, h] = NLL_-h - NLL_uni.
2. a[h] = mean over samples of delta[:, h]; c = a - mean(a) (what matters is how a head differs from the others).
3. Noise: se[h] = the bootstrap standard error of c[h] (`--bootstrap` resamples of the samples, seeded).
4. Shrinkage: c'[h] = sign(c[h]) * max(0, |c[h]| - 2 se[h]) (soft threshold at the ~95% noise band): an effect
   within its sampling noise counts for nothing, a larger one counts only by the part beyond the noise.
5. w = H * softmax(c' / T), T = `--temperature` in nats per token (default 0.1): a head whose ablation costs T
   nats more than the average head, beyond the noise, weighs e times more. Sizes are kept (1e-6 nats of effect
   gives 1e-5 of weight change) and a category whose deltas are all noise gets uniform weights.
Centers and bandwidth (eq. 13): the selectivity spread (eq. 11) of `--routing-samples` samples per category;
mu_sem and mu_aco are the category means, mu_uni their midpoint, sigma_G the pooled within-category standard
deviation sqrt((var_sem + var_aco) / 2) (at least 1e-4). The learned router: `headrouter.learned.fit_router` on
the per-head selectivities, spreads and audio lengths of `--router-samples` samples per category.
The file records the settings it was calibrated under (layer, probe input, query tokens, pre-filter ratio).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("headrouter")

__all__ = [
    "CalibrateOptions",
    "ablation_weights",
    "answer_token_ids",
    "answer_nll",
    "calibrate",
    "pooled_bandwidth",
    "trunk_pass",
]


@dataclass(frozen=True)
class CalibrateOptions:
    model: str
    manifest: str
    out: str | None = None
    seed: int = 0
    ablation_samples: int = 24
    routing_samples: int = 10
    router_samples: int = 60
    retain: float = 0.4
    layer: int = 2
    prefilter: float = 2.0
    probe_input: str = "normed"
    query_tokens: str = "after_audio"
    temperature: float = 0.1  # nats per token
    bootstrap: int = 1000
    ablation_batch: int = 0  # ablations per forward of layers >= M; 0 = all 1 + H at once
    device: str | None = None  # default: cuda when available, else cpu
    dtype: str | None = None  # default: bfloat16 on cuda, float32 on cpu
    threads: int = 1  # torch CPU threads (more measured 25x slower on 2 shared cores)


def ablation_weights(
    deltas: np.ndarray, temperature: float = 0.1, seed: int = 0, resamples: int = 1000
) -> tuple[np.ndarray, dict]:
    """Per-sample ablation deltas [S, H] (nats) -> head weights [H] (sum H) and the rule's intermediate values.

    See the module docstring: centered mean effect, bootstrap standard error, soft threshold at 2 se,
    H * softmax(shrunk / temperature).
    """
    deltas = np.asarray(deltas, dtype=np.float64)
    if deltas.ndim != 2 or deltas.shape[0] < 1 or not np.isfinite(deltas).all():
        raise ValueError(f"deltas must be a finite [samples, heads] array, got shape {deltas.shape}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 nats, got {temperature}")
    s, h = deltas.shape
    mean = deltas.mean(axis=0)  # [H]
    centered = mean - mean.mean()  # [H]
    if s > 1 and resamples > 1:
        idx = np.random.default_rng(seed).integers(0, s, size=(resamples, s))  # [R, S]
        boot = deltas[idx].mean(axis=1)  # [R, H]
        se = (boot - boot.mean(axis=1, keepdims=True)).std(axis=0, ddof=1)  # [H]
    else:
        se = np.zeros(h)  # one sample: no noise estimate, no shrinkage
    shrunk = np.sign(centered) * np.maximum(0.0, np.abs(centered) - 2.0 * se)  # [H]
    z = shrunk / temperature
    e = np.exp(z - z.max())
    weights = h * e / e.sum()
    return weights, {"ablation": mean.tolist(), "se": se.tolist(), "shrunk": shrunk.tolist()}


def answer_token_ids(lalm, answer: str) -> list[int]:
    """The teacher-forced answer: its tokens, then the token that closes the family's assistant turn."""
    return [*lalm.tokenizer(answer, add_special_tokens=False)["input_ids"], lalm.answer_end_id]


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


class _Stop(Exception):
    pass


@dataclass
class Trunk:
    """What one pass through the audio encoder and layers < M leaves for every ablation of one sample.

    hidden [1, T, D]: layer M's input over prompt + answer[:-1]; kwargs: layer M's other keyword inputs
    (position embeddings, position ids, mask); q_text [H, Nt, d] / k_audio [H, Na, d]: the no-RoPE probe;
    prunable [Na]: positions of the prunable audio tokens; answer [n]: the answer token ids.
    """

    hidden: object
    kwargs: dict
    q_text: object
    k_audio: object
    prunable: object
    answer: object


def trunk_pass(lalm, inputs: dict, answer_ids: list[int], options) -> Trunk:
    """One forward of prompt + answer[:-1] that stops at layer M's input (the audio encoder and layers < M run once)."""
    import torch

    from headrouter.attention import project_qk
    from headrouter.engine.hooks import audio_spans

    m = options.layer
    prompt = inputs["input_ids"]  # [1, Tp]
    answer = torch.tensor(answer_ids, dtype=prompt.dtype, device=prompt.device)  # [n]
    ids = torch.cat(
        [prompt, answer[None, :-1]], dim=1
    )  # [1, T]  teacher forcing: answer[i] predicted at Tp-1+i
    full = {**inputs, "input_ids": ids}
    if "attention_mask" in inputs:
        full["attention_mask"] = torch.ones_like(ids)
    spans = audio_spans(prompt[0], lalm.token_ids, options)
    if spans is None:
        raise ValueError("calibration sample has no audio tokens")
    prunable, query = spans
    seen: dict = {}

    def attn_pre(module, args, kwargs):
        seen["normed"] = kwargs.get("hidden_states", args[0] if args else None)[0]  # [T, D]

    def layer_pre(module, args, kwargs):
        kwargs = dict(kwargs)
        seen["hidden"] = kwargs.pop("hidden_states") if "hidden_states" in kwargs else args[0]  # [1, T, D]
        seen["kwargs"] = kwargs
        raise _Stop

    attn = lalm.layers[m - 1].self_attn
    handles = [
        attn.register_forward_pre_hook(attn_pre, with_kwargs=True),
        lalm.layers[m].register_forward_pre_hook(layer_pre, with_kwargs=True),
    ]
    try:
        with torch.inference_mode():
            lalm.model(**full, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    with torch.inference_mode():
        if options.probe_input == "normed":
            states = seen["normed"]  # [T, D]
        else:
            states = lalm.layers[m - 1].input_layernorm(seen["hidden"][0])  # [T, D]
        # the stock projections before RoPE, as the hooks' probe computes them (fused qkv, q/k norms included)
        q, _ = project_qk(attn, states[query])  # [H, Nt, d]
        _, k = project_qk(attn, states[prunable])  # [Hkv, Na, d]
        k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)  # [H, Na, d]
    return Trunk(seen["hidden"], seen["kwargs"], q, k, prunable, answer)


def _tail_logits(lalm, trunk: Trunk, keeps: list, m: int):
    """Layers M..L-1 + final norm + LM head for each kept-position set; logits [B, n, V] at the answer positions."""
    import torch

    t = trunk.hidden.shape[1]
    n = trunk.answer.numel()
    hidden = torch.cat([trunk.hidden.index_select(1, k) for k in keeps])  # [B, Tk, D]
    kwargs = dict(trunk.kwargs)
    cos, sin = kwargs["position_embeddings"]  # [1, T, d]: kept tokens keep their original positions
    kwargs["position_embeddings"] = (
        torch.cat([cos.index_select(-2, k) for k in keeps]),  # [B, Tk, d]
        torch.cat([sin.index_select(-2, k) for k in keeps]),
    )
    pos = kwargs.get("position_ids")
    if isinstance(pos, torch.Tensor) and pos.shape[-1] == t:  # [1, T] or [3, 1, T] -> [B, Tk] or [3, B, Tk]
        kwargs["position_ids"] = torch.cat([pos.index_select(-1, k) for k in keeps], dim=-2)
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor):  # materialized [1, 1, T, T] (eager): rows and columns of kept tokens
        kwargs["attention_mask"] = torch.cat([mask.index_select(-2, k).index_select(-1, k) for k in keeps])
    for key in ("cache", "past_key_values"):
        if key in kwargs:
            kwargs[key] = None
    kwargs["use_cache"] = False
    for layer in lalm.layers[m:]:
        hidden = layer(hidden, **kwargs)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    out = lalm.final_norm(hidden[:, -n:])  # [B, n, D]: the last prompt position and answer[:-1]
    return lalm.model.get_output_embeddings()(out).float()  # [B, n, V]


def answer_nll(lalm, trunk: Trunk, routers: list, retain: float, m: int, batch: int = 0) -> list[float]:
    """Mean NLL per answer token for each router's selection (all from one trunk pass); len(routers) values."""
    import torch

    t = trunk.hidden.shape[1]
    device = trunk.hidden.device
    prunable = trunk.prunable.to(device)
    keeps = []
    with torch.inference_mode():
        for router in routers:
            keep_audio = router.select(trunk.q_text, trunk.k_audio, retain).keep.to(device)  # [k]
            mask = torch.ones(t, dtype=torch.bool, device=device)
            mask[prunable] = False
            mask[prunable[keep_audio]] = True
            keeps.append(mask.nonzero().flatten())  # [Tk] ascending, same Tk for every router
        size = batch if batch > 0 else len(keeps)
        target = trunk.answer.to(device)  # [n]
        nll = []
        for i in range(0, len(keeps), size):
            logits = _tail_logits(lalm, trunk, keeps[i : i + size], m)  # [b, n, V]
            logp = torch.log_softmax(logits, dim=-1).gather(-1, target.expand(logits.shape[0], -1)[..., None])
            nll.extend((-logp[..., 0].mean(dim=1)).tolist())  # [b]
    return nll


def _load_rows(manifest: Path, seed: int, per_category: int) -> dict[str, list[dict]]:
    import soundfile as sf

    from headrouter.engine.prompt import task_prompt

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
    from headrouter.learned import fit_router
    from headrouter.routing import probe_distribution, selectivity, selectivity_spread

    torch.manual_seed(opts.seed)
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(opts.threads)
    lalm = load_lalm(opts.model, device=device, dtype=opts.dtype)
    heads = lalm.num_heads
    per_category = max(opts.ablation_samples, opts.routing_samples, opts.router_samples)
    rows = _load_rows(Path(opts.manifest), opts.seed, per_category)
    options = PruneOptions(
        method="headrouter",
        retain=opts.retain,
        layer=opts.layer,
        prefilter=opts.prefilter,
        probe_input=opts.probe_input,
        query_tokens=opts.query_tokens,
    )
    if not 1 <= opts.layer <= lalm.num_layers - 1:
        raise ValueError(f"layer must be in [1, {lalm.num_layers - 1}], got {opts.layer}")
    routers = [_fixed_router(np.ones(heads), opts.prefilter)]
    for h in range(heads):
        w = np.ones(heads)
        w[h] = 0.0
        routers.append(_fixed_router(w, opts.prefilter))

    stats: dict[str, dict] = {}
    router_samples: list[dict] = []
    started, ablated = time.perf_counter(), 0
    for cat, bucket in rows.items():
        deltas, spreads = [], []
        for j, row in enumerate(bucket):
            inputs = lalm.prepare(row["_audio"], row["_prompt"], row["_sr"])
            answer_ids = answer_token_ids(lalm, row["answer"])
            trunk = trunk_pass(lalm, inputs, answer_ids, options)
            sel = selectivity(probe_distribution(trunk.q_text, trunk.k_audio))  # [H]
            spread = selectivity_spread(sel)
            if j < opts.routing_samples:
                spreads.append(spread)
            if j < opts.router_samples:
                router_samples.append(
                    {
                        "category": cat,
                        "selectivity": sel,
                        "spread": spread,
                        "num_audio": trunk.prunable.numel(),
                    }
                )
            if j < opts.ablation_samples:
                nll = answer_nll(
                    lalm, trunk, routers, opts.retain, opts.layer, opts.ablation_batch
                )  # [1 + H]
                deltas.append(np.array(nll[1:]) - nll[0])
                ablated += 1
        weights, rule = ablation_weights(np.array(deltas), opts.temperature, opts.seed, opts.bootstrap)
        stats[cat] = {
            **rule,
            "weights": weights.tolist(),
            "spreads": spreads,
            "ablation_samples": len(deltas),
            "ids": [r.get("id") for r in bucket[: opts.ablation_samples]],
        }
        log.info("%s: ablation %s -> weights %s", cat, np.round(rule["ablation"], 4), np.round(weights, 3))
    elapsed = time.perf_counter() - started
    log.info("%d ablated samples in %.1f s (%.2f s per sample, 1 + %d ablations each)", ablated, elapsed,
             elapsed / max(ablated, 1), heads)  # fmt: skip
    try:
        router = fit_router(router_samples)
        log.info("learned router: %s", router.info)
    except ValueError as exc:
        router = None
        log.warning("no learned router: %s", exc)

    sem, aco = stats["semantic"]["spreads"], stats["acoustic"]["spreads"]
    mu_sem, mu_aco = float(np.mean(sem)), float(np.mean(aco))
    profiles = Profiles(
        semantic=tuple(stats["semantic"]["weights"]),
        acoustic=tuple(stats["acoustic"]["weights"]),
        centers=(mu_sem, (mu_sem + mu_aco) / 2, mu_aco),
        bandwidth=pooled_bandwidth(sem, aco),
        model_id=opts.model,
        layer=opts.layer,
        calibration={
            "method": "head-ablation",
            "rule": "H * softmax(soft_threshold(centered mean delta, 2 bootstrap se) / temperature)",
            "manifest": Path(opts.manifest).name,
            "seed": opts.seed,
            "retain": opts.retain,
            "temperature": opts.temperature,
            "bootstrap": opts.bootstrap,
            "dtype": str(lalm.dtype).removeprefix("torch."),
            "semantic": stats["semantic"],
            "acoustic": stats["acoustic"],
        },
        settings={
            "layer": opts.layer,
            "probe_input": opts.probe_input,
            "query_tokens": opts.query_tokens,
            "prefilter": opts.prefilter,
        },
        router=router,
    )
    out = Path(opts.out) if opts.out else (lalm.folder / "headrouter_profiles.json" if lalm.folder else None)
    if out is None:
        raise ValueError("--out is required for a model that is not a local folder")
    profiles.save(out)
    Profiles.load(out, num_heads=heads)  # the loader's validation
    log.info("wrote %s: centers %s bandwidth %s", out, profiles.centers, profiles.bandwidth)
    return profiles
