"""Train `tiny-synth` (`python -m jobs.train_tiny`): a small Qwen2.5-Omni thinker, from scratch, on the synthetic
tasks (CPU, SDPA). Loss is cross-entropy on the answer tokens and `<|im_end|>` only.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from quality.data import IGNORE, Example, collate, load_examples, read_manifest, tiny_synth_words
from quality.scoring import score

log = logging.getLogger("quality")


@dataclass(frozen=True)
class TrainOptions:
    data: str
    out: str
    minutes: float = 50.0
    steps: int | None = None
    seed: int = 0
    init_from: str | None = None  # warm start from a saved model folder (fresh optimizer and schedule)
    semantic_weight: int = 1  # semantic examples appear this many times per epoch of short batches
    batch_size: int = 16
    long_batch_size: int = 2
    long_start: float = 0.3  # share of the run before long batches start
    long_prob: float = 0.1  # then this share of steps is a long batch (one costs ~8 short ones)
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    hidden: int = 128
    layers: int = 6
    heads: int = 8
    kv_heads: int = 2
    mlp: int = 512
    audio_d_model: int = 128
    audio_layers: int = 2
    audio_heads: int = 4
    eval_every: int = 300
    threads: int = 1  # 2 threads on 2 cores shared with other jobs measured 5-50x slower per op


def build_model(opts: TrainOptions, tokenizer):
    """A randomly initialised thinker of the configured size (seeded), SDPA attention."""
    from transformers import GenerationConfig, Qwen2_5OmniThinkerForConditionalGeneration

    from headrouter.engine.tiny import special_token_ids, tiny_thinker_config

    config = tiny_thinker_config(
        len(tokenizer), tokenizer, hidden_size=opts.hidden, num_layers=opts.layers, num_heads=opts.heads,
        num_kv_heads=opts.kv_heads, intermediate_size=opts.mlp, audio_d_model=opts.audio_d_model,
        audio_layers=opts.audio_layers, audio_heads=opts.audio_heads,
    )  # fmt: skip
    config.audio_config.encoder_ffn_dim = 4 * opts.audio_d_model
    torch.manual_seed(opts.seed)
    if opts.init_from:
        model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
            opts.init_from, attn_implementation="sdpa"
        )
        if model.config.text_config.vocab_size != len(tokenizer):
            raise ValueError(f"{opts.init_from} has a different vocabulary")
    else:
        model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    ids = special_token_ids(tokenizer)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["eos_token_id"], ids["endoftext_token_id"]], pad_token_id=ids["pad_token_id"],
        do_sample=False,
    )  # fmt: skip
    return model


def answer_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over answer tokens -> (loss, per-example all-answer-tokens-correct [B] bool)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits[:, :-1]  # [B, T-1, V]
    target = labels[:, 1:]  # [B, T-1]
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE)
    hit = (logits.argmax(-1) == target) | (target == IGNORE)
    return loss, hit.all(dim=1)


def _batches(examples: list[Example], size: int, rng: np.random.Generator):
    """Endless stream of length-bucketed batches (similar clip lengths together), reshuffled every epoch."""
    while True:
        order = rng.permutation(len(examples))
        # sort a shuffled window of 50 batches by length, so padding stays small but batches still vary
        window = size * 50
        for w in range(0, len(order), window):
            chunk = sorted(order[w : w + window], key=lambda i: examples[i].mel.shape[1])
            groups = [chunk[j : j + size] for j in range(0, len(chunk), size)]
            for g in rng.permutation(len(groups)):
                yield [examples[i] for i in groups[g]]


def _lr(opts: TrainOptions, step: int, progress: float) -> float:
    if step < opts.warmup:
        return opts.lr * (step + 1) / opts.warmup
    return opts.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@torch.no_grad()
def evaluate(model, tokenizer, examples: list[Example], batch_size: int = 16) -> tuple[dict, list[dict]]:
    """Greedy generation on `examples` -> (metrics per task and length, per-sample results)."""
    model.eval()
    pad = tokenizer.pad_token_id
    results = []
    order = sorted(range(len(examples)), key=lambda i: examples[i].mel.shape[1])
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        batch = collate(chunk, pad, with_answer=False)
        batch.pop("labels")
        out = model.generate(**batch, max_new_tokens=12, do_sample=False)
        for e, seq in zip(chunk, out[:, batch["input_ids"].shape[1] :]):
            text = tokenizer.decode(seq, skip_special_tokens=True).strip()
            results.append({"id": e.row["id"], "task": e.row["task"], "long": e.row.get("long", False),
                            "answer": e.row["answer"], "prediction": text, "score": score(e.row, text)})  # fmt: skip
    model.train()
    groups: dict[str, list[float]] = defaultdict(list)
    for r in results:
        length = "long" if r["long"] else "short"
        for key in (r["task"], f"{r['task']}/{length}", "all", f"all/{length}"):
            groups[key].append(r["score"])
    return {k: {"score": float(np.mean(v)), "n": len(v)} for k, v in sorted(groups.items())}, results


def save(model, tokenizer, out: Path, info: dict) -> None:
    """Write a model folder load_lalm reads (config.json, model.safetensors, tokenizer, preprocessor_config.json)
    plus training_info.json."""
    from headrouter.engine.audio import make_feature_extractor

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    make_feature_extractor(window_s=300.0).save_pretrained(out)
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")


def train(opts: TrainOptions) -> dict:
    """Run the training described by `opts`; returns the training info written next to the weights."""
    from transformers.utils import logging as hf_logging

    from headrouter.engine.tiny import build_word_tokenizer

    hf_logging.disable_progress_bar()
    torch.set_num_threads(opts.threads)
    data, out = Path(opts.data), Path(opts.out)
    tokenizer = build_word_tokenizer(tiny_synth_words())
    model = build_model(opts, tokenizer).train()
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2fM parameters, vocab %d", n_params / 1e6, len(tokenizer))

    t0 = time.monotonic()
    train_ex = load_examples(read_manifest(data / "train.jsonl"), tokenizer, data / "mel")
    test_path = data / "test.jsonl"
    test_ex = load_examples(read_manifest(test_path), tokenizer, data / "mel") if test_path.exists() else []
    log.info(
        "features ready in %.0f s: %d train, %d test", time.monotonic() - t0, len(train_ex), len(test_ex)
    )
    short = [e for e in train_ex if not e.row.get("long")]
    short += [e for e in short if e.row["category"] == "semantic"] * (opts.semantic_weight - 1)
    long = [e for e in train_ex if e.row.get("long")]
    rng = np.random.default_rng(opts.seed)
    short_it, long_it = _batches(short, opts.batch_size, rng), _batches(long, opts.long_batch_size, rng)
    probe = [e for e in test_ex if not e.row.get("long")][:96] + [e for e in test_ex if e.row.get("long")][:8]

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=opts.lr, betas=(0.9, 0.98),
    )  # fmt: skip
    budget = opts.minutes * 60
    start, step, smooth, history = time.monotonic(), 0, None, []
    while True:
        elapsed = time.monotonic() - start
        progress = step / opts.steps if opts.steps else elapsed / budget
        if progress >= 1.0 or elapsed >= budget:
            break
        use_long = long and progress >= opts.long_start and rng.random() < opts.long_prob
        batch = collate(next(long_it) if use_long else next(short_it), tokenizer.pad_token_id)
        for group in optim.param_groups:
            group["lr"] = _lr(opts, step, progress)
        loss, _ = answer_loss(model, batch)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        step += 1
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        if step % 50 == 0:
            log.info("step %d  %.0f s  loss %.4f (smoothed %.4f)  lr %.2e  %s", step, elapsed, loss.item(), smooth,
                     optim.param_groups[0]["lr"], "long" if use_long else "short")  # fmt: skip
        if probe and step % opts.eval_every == 0:
            model.eval()
            with torch.no_grad():
                hits = defaultdict(list)
                for j in range(0, len(probe), 16):
                    chunk = probe[j : j + 16]
                    _, ok = answer_loss(model, collate(chunk, tokenizer.pad_token_id))
                    for e, h in zip(chunk, ok.tolist()):
                        hits[e.row["task"] + ("/long" if e.row.get("long") else "")].append(h)
            model.train()
            tf = {k: round(float(np.mean(v)), 3) for k, v in sorted(hits.items())}
            history.append(
                {
                    "step": step,
                    "seconds": round(elapsed),
                    "smoothed_loss": round(smooth, 4),
                    "teacher_forced": tf,
                }
            )
            log.info("teacher-forced exact answers at step %d: %s", step, tf)
            save(
                model,
                tokenizer,
                out,
                {"options": asdict(opts), "steps": step, "partial": True, "history": history},
            )

    info = {"options": asdict(opts), "steps": step, "train_seconds": round(time.monotonic() - start),
            "parameters": n_params, "final_smoothed_loss": smooth, "history": history}  # fmt: skip
    save(model, tokenizer, out, info)
    if test_ex:
        metrics, results = evaluate(model, tokenizer, test_ex)
        info["test"] = {"manifest": str(test_path), "metrics": metrics}
        save(model, tokenizer, out, info)
        with open(out / "test_results.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
        for key, m in metrics.items():
            log.info("held-out %-16s %.3f (n=%d)", key, m["score"], m["n"])
    log.info("saved %s after %d steps", out, step)
    return info
