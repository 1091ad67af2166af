"""The performance targets (pruning efficiency vs the FLOP bound, routing overhead, memory, pipeline overhead)
checked against the benchmark's results, and the Markdown report."""

from __future__ import annotations

__all__ = ["render_markdown", "targets"]

MIB = 2**20


def _longest(rows: list[dict]) -> int | None:
    return max((r["audio_tokens"] for r in rows), default=None)


def _target(name: str, measured: str, met: bool | None, note: str = "") -> dict:
    return {"target": name, "measured": measured, "met": met, "note": note}


def targets(res: dict) -> list[dict]:
    """One entry per performance target: what was measured and whether it is met (None: not measured)."""
    from bench.batch import batch_targets
    from bench.continuous import continuous_targets
    from bench.loop import loop_targets

    out = batch_targets(res) + loop_targets(res) + continuous_targets(res)
    pre = res.get("prefill") or []
    n = _longest(pre)
    eff = [
        r for r in pre if r["audio_tokens"] == n and r["retain"] in (0.4, 0.1) and r["method"] != "vanilla"
    ]
    if eff:
        hr = [r for r in eff if r["method"] == "headrouter"]
        worst = min(hr or eff, key=lambda r: r["efficiency"])
        others = ", ".join(f"{r['method']}@{r['retain']}: {r['efficiency']:.2f}" for r in eff if r not in hr)
        out.append(
            _target(
                f"efficiency >= 0.9 at retain 0.4 and 0.1 on {n} tokens",
                ", ".join(f"headrouter@{r['retain']}: {r['efficiency']:.2f}" for r in hr),
                worst["efficiency"] >= 0.9,
                f"others: {others}" if others else "",
            )
        )
    hr_rows = [r for r in pre if r["method"] == "headrouter"]
    if hr_rows:
        worst = max(hr_rows, key=lambda r: r["prune_share_of_vanilla"])
        per_len = {}
        for r in hr_rows:
            per_len[r["audio_tokens"]] = max(per_len.get(r["audio_tokens"], 0.0), r["prune_share_of_vanilla"])
        out.append(
            _target(
                "routing overhead <= 1% of vanilla prefill",
                ", ".join(f"{k} tokens: {v:.2%}" for k, v in sorted(per_len.items())),
                worst["prune_share_of_vanilla"] <= 0.01,
                "worst retain per length; probe + routing + selection + slicing at layer M",
            )
        )
    mem = res.get("memory") or []
    if mem:
        peak = {
            (r["method"], r["retain"]): r["peak_bytes"]
            for r in mem
            if r.get("lm_head", "last").startswith("last")
        }
        van = peak.get(("vanilla", 1.0))
        pairs = [(r, peak.get(("fastv", r))) for m, r in peak if m == "headrouter"]
        parts, below_fastv, below_van = [], True, True
        for retain, fv in pairs:
            hr = peak[("headrouter", retain)]
            text = f"retain {retain}: headrouter {hr / MIB:.0f} MiB"
            if fv is not None:
                text += f", fastv {fv / MIB:.0f} MiB" + (
                    " (a tie: within 5%)" if abs(hr - fv) < 0.05 * fv else ""
                )
            parts.append(text + f", vanilla {van / MIB:.0f} MiB")
            below_fastv = below_fastv and fv is not None and hr < fv
            below_van = below_van and hr <= van
        out.append(
            _target(
                "HeadRouter prefill peak memory below FastV's, never above vanilla's",
                "; ".join(parts),
                below_fastv and below_van,
                "our FastV scores the last query against cached keys (no attention weights materialized), "
                "so at one retain it needs the same memory as HeadRouter up to allocator noise; the eager-weights "
                "column is what a FastV reading attention weights (the paper's baseline) would add",
            )
        )
    pipe = res.get("pipeline")
    if pipe:
        big = max((r for r in pipe["ray"] if r["actors"] == 1), key=lambda r: r["files"])
        marginal = pipe.get("marginal_overhead")
        norm = big.get("overhead_normalized")
        out.append(
            _target(
                "pipeline overhead <= 10% of model time",
                f"1 actor, {big['files']} files: {big['overhead_vs_model']:+.0%} vs generate alone, "
                + ("n/a" if norm is None else f"{norm:+.0%}")
                + " load-normalized; marginal "
                + ("n/a" if marginal is None else f"{marginal:+.0%}")
                + (
                    ""
                    if pipe["fixed_cost_s"] is None
                    else f"; fixed cost {pipe['fixed_cost_s']:.1f} s per run"
                ),
                None if norm is None else norm <= 0.10,
                "judged on the load-normalized figure (wall per second of model work, pipeline vs model alone); "
                "whole run incl. actor start and model load; Ray started beforehand "
                f"({pipe['ray_init_s']:.1f} s)",
            )
        )
    rtf = res.get("stage_rtf")
    if rtf:
        worst = min(rtf, key=lambda r: r["rtf_cpu"])
        out.append(
            _target(
                "decode + chunk + features >= 100x real time per core",
                ", ".join(
                    f"{r['format']}: {r['rtf_cpu']:.0f}x (CPU time), {r['rtf_wall']:.0f}x (wall)" for r in rtf
                ),
                worst["rtf_cpu"] >= 100,
                "one thread; CPU time includes an ffmpeg child if one ran",
            )
        )
    dm = res.get("decode_memory")
    if dm and len(dm) > 1:
        first, last = dm[0], dm[-1]
        ratio = last["peak_rss_bytes"] / first["peak_rss_bytes"]
        out.append(
            _target(
                f"worker peak memory for {last['minutes']:g} min within 10% of {first['minutes']:g} min",
                f"{first['peak_rss_bytes'] / MIB:.0f} MiB -> {last['peak_rss_bytes'] / MIB:.0f} MiB ({ratio - 1:+.1%})",
                ratio <= 1.10,
                "decode-and-chunk stage (pipeline.graph.decode_and_chunk) in a fresh process; "
                + _plateau(dm),
            )
        )
    return out


def _plateau(dm: list[dict]) -> str:
    """Whether resident memory keeps rising chunk after chunk on the longest input, or levels off."""
    multi = [r for r in dm if r["chunks"] > 1]
    if not multi:
        return "every input was a single chunk"
    low = min(multi, key=lambda r: r["minutes"])
    high = max(dm, key=lambda r: r["minutes"])
    t = high["rss_after_chunk_mib"]
    half = len(t) // 2
    return (
        f"{low['minutes']:g} min ({low['chunks']} chunks) -> {high['minutes']:g} min: "
        f"{high['peak_rss_bytes'] / low['peak_rss_bytes'] - 1:+.1%}; on the {high['minutes']:g}-min input the "
        f"resident size peaks at {max(t[:half] or t)} MiB over its first {half} chunks and {max(t[half:])} MiB "
        "over the rest"
    )


# ---- Markdown ------------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _model_name(model: str) -> str:
    if model.startswith("bench-"):
        return f"{model} (the prefill benchmark's 3B-shaped thinker at {model.split('-')[1][:-1]} layers, random weights)"
    return model


def _basis(res: dict) -> str:
    pre = res.get("prefill") or [{}]
    if pre[0].get("basis") == "cpu":
        return "process CPU time of a single-threaded prefill (other processes on the shared cores cannot inflate it)"
    return "wall-clock time"


def _met(v: bool | None) -> str:
    return "not measured" if v is None else ("met" if v else "**missed**")


def render_markdown(res: dict) -> str:
    m = res["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads)"
    parts = [
        "# HeadRouter benchmark\n",
        f"`{res['command']}` — {res['started']}, {res['duration_s']:.0f} s, on {where}, "
        f"torch {m['torch']}, transformers {m['transformers']}, commit {m.get('git_commit', '?')}. "
        f"Load average {m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end "
        "(the machine is shared).\n",
    ]
    if res.get("targets"):
        parts.append("\n## Targets\n\n")
        parts.append(
            _table(
                ["target", "measured", "result", "note"],
                [[t["target"], t["measured"], _met(t["met"]), t["note"]] for t in res["targets"]],
            )
        )
    if res.get("gating"):
        from bench.gating import render_gating

        parts.append(render_gating(res["gating"]))
    shape = res.get("shape")
    if shape:
        t = shape["text"]
        parts.append(
            f"\n## Prefill\n\nModel: Qwen2.5-Omni thinker, {t['layers']} layers, hidden {t['hidden']}, "
            f"{t['heads']} heads / {t['kv_heads']} KV heads (head_dim {t['head_dim']}), MLP {t['intermediate']}, "
            f"vocab {t['vocab']}, {shape['params'] / 1e6:.0f} M parameters, {shape['dtype']} on {shape['device']}, "
            f"dummy weights, pruning at layer {shape['layer']}, {res['machine']['torch_threads']} torch thread(s). "
            f"Timing basis: **{_basis(res)}**. Speed-up = median over rounds of vanilla / method time in the same "
            "round; bound = FLOP ratio (bench/flops.py); efficiency = speed-up / bound (the wall column uses "
            "wall-clock time whatever the basis); hook = time inside the pruning pre-hook of layer M (probe, "
            "scoring, selection, slicing); eff. layers >= M = the speed-up of the decoder layers >= M alone over "
            "their FLOP ratio (does the pruned part scale as its FLOPs say?). Times in seconds of the basis.\n\n"
        )
    pre = res.get("prefill") or []
    if pre:
        rows = [
            [
                r["audio_tokens"],
                r["method"],
                r["retain"],
                f"{r['kept_len']}/{r['seq_len']}",
                f"{r['median_s']:.3f}",
                f"{r['speedup']:.2f}x",
                f"{r['flop_bound']:.2f}x",
                f"{r['efficiency']:.2f}",
                f"{r['efficiency_wall']:.2f}",
                "-" if r.get("late_layers_efficiency") is None else f"{r['late_layers_efficiency']:.2f}",
                "-" if r.get("early_s") is None else f"{r['early_s']:.2f} / {r['late_s']:.2f}",
                f"{r['prune_hook_s'] * 1e3:.1f}",
                f"{r['prune_share_of_vanilla']:.2%}",
                f"{r['kv_bytes_kept'] / MIB:.1f}",
            ]
            for r in pre
        ]
        header = ["audio tokens", "method", "retain", "kept/total", "median s", "speed-up", "FLOP bound"]
        header += ["efficiency", "eff. (wall)", "eff. layers >= M", "s in layers < M / >= M"]
        header += ["hook ms", "hook / vanilla", "KV MiB"]
        parts.append(_table(header, rows))
    fsb = res.get("full_size_bounds")
    if fsb:
        parts.append(
            "\n### Analytical bounds at full size (Qwen2.5-Omni-3B, not measured)\n\n"
            "The audio encoder (Whisper-large-v3-like, 32 layers, d_model 1280) runs before the LLM and pruning "
            "does not reduce it. Probe share = HeadRouter's probe FLOPs / vanilla LLM FLOPs. The last two columns are what the "
            "stock prefill adds by running lm_head on every kept position (the thinker's forward has no "
            "logits_to_keep; the engine runs it on the last position only): extra FLOPs as a share of the vanilla "
            "LLM, and the bfloat16 logits it would hold.\n\n"
        )
        rows = [
            [
                r["audio_tokens"],
                r["retain"],
                f"{r['llm_tflop_vanilla']:.1f}",
                f"{r['encoder_tflop']:.1f}",
                f"{r['encoder_share_of_vanilla']:.0%}",
                f"{r['llm_bound']:.2f}x",
                f"{r['end_to_end_bound']:.2f}x",
                f"{r['probe_share']:.3%}",
                f"{r['engine_lm_head_share']:.1%}",
                f"{r['engine_logits_gib_bf16']:.2f}",
            ]
            for r in fsb
        ]
        header = ["audio tokens", "retain", "LLM TFLOP", "encoder TFLOP", "encoder share"]
        header += ["LLM bound", "with encoder", "probe FLOP share", "lm_head all positions", "logits GiB"]
        parts.append(_table(header, rows))
    mem = res.get("memory") or []
    if mem:
        parts.append(
            f"\n## Memory ({mem[0]['audio_tokens']} audio tokens, {mem[0]['kind']})\n\n"
            "Peak = the process's peak during the prefill (weights included); extra = peak minus the memory held "
            "just before it. Eager weights = one layer's [H, T, T] attention weights, what a FastV that reads "
            "attention weights must materialize (computed, not measured).\n\n"
        )
        rows = [
            [
                r["method"],
                r["retain"],
                f"{r['kv_bytes_full'] / MIB:.1f}",
                f"{r['kv_bytes_kept'] / MIB:.1f}",
                f"{r['peak_bytes'] / MIB:.0f}",
                f"{r['prefill_extra_bytes'] / MIB:.0f}",
                f"{r['eager_attention_weights_bytes'] / MIB:.0f}",
                r.get("lm_head", "last position"),
            ]
            for r in mem
        ]
        header = ["method", "retain", "KV MiB unpruned", "KV MiB kept", "peak MiB", "extra MiB"]
        header += ["eager weights MiB", "lm_head on"]
        parts.append(_table(header, rows))
    pipe = res.get("pipeline")
    if pipe:
        a = pipe["model_alone"]["small"]
        b = pipe["model_alone"].get("big", a)
        marginal = pipe.get("marginal_overhead")
        parts.append(
            f"\n## Pipeline ({pipe['files']} (and {2 * pipe['files']}) files x {pipe['seconds_per_file']:g} s, "
            f"model {_model_name(pipe['model'])}, {pipe['method']} retain {pipe['retain']}, "
            f"max_new_tokens {pipe['max_new_tokens']}, batch {pipe['batch_size']})\n\n"
            f"Model alone (generate on the same chunks, {b['torch_threads']} torch thread like an actor): "
            f"{a['wall_s']:.1f} s / {b['wall_s']:.1f} s, {b['audio_s_per_wall_s']:.0f} audio s per wall s "
            f"(model load {b['load_s']:.1f} s, not counted). Ray started beforehand in {pipe['ray_init_s']:.1f} s. "
            + ("" if pipe["fixed_cost_s"] is None else f"Fixed cost per run {pipe['fixed_cost_s']:.1f} s; ")
            + "marginal overhead "
            + ("n/a" if marginal is None else f"{marginal:+.0%}")
            + " (extra pipeline wall per extra audio second vs the model alone's, 1 actor).\n\n"
        )
        rows = [
            [
                r["actors"],
                r["files"],
                f"{r['wall_s']:.1f}",
                f"{r['audio_s_per_wall_s']:.0f}",
                f"{r['overhead_vs_model']:+.0%}",
                f"{r['overhead_vs_model_and_load']:+.0%}",
                f"{r['model_s_in_actors']:.1f}",
                "-" if r.get("overhead_normalized") is None else f"{r['overhead_normalized']:+.0%}",
                f"{r['files_ok']}/{r['files_ok'] + r['files_failed']}",
            ]
            for r in pipe["ray"]
        ]
        header = ["actors", "files", "wall s", "audio s / wall s", "vs model alone", "vs model + load"]
        header += ["model s in actors", "load-normalized overhead", "files ok"]
        parts.append(_table(header, rows))
    rtf = res.get("stage_rtf")
    if rtf:
        parts.append("\n### Decode + chunk + features, one thread\n\n")
        rows = [
            [
                r["format"],
                r["source"],
                f"{r['audio_s']:.0f}",
                f"{r['cpu_s']:.2f}",
                f"{r['rtf_cpu']:.0f}x",
                f"{r['rtf_wall']:.0f}x",
            ]
            for r in rtf
        ]
        parts.append(_table(["format", "source", "audio s", "CPU s", "RTF (CPU time)", "RTF (wall)"], rows))
    dm = res.get("decode_memory")
    if dm:
        parts.append("\n### Decode-and-chunk stage peak memory vs input length (fresh process each)\n\n")
        rows = [
            [
                f"{r['minutes']:g}",
                r["chunks"],
                f"{r['file_bytes'] / MIB:.1f}",
                f"{r['peak_rss_bytes'] / MIB:.0f}",
                f"{r['peak_vs_first']:.2f}",
            ]
            for r in dm
        ]
        parts.append(_table(["minutes", "chunks", "file MiB", "peak RSS MiB", "vs shortest"], rows))
    from bench.batch import render_batch

    parts.append(render_batch(res))
    from bench.continuous import render_continuous
    from bench.loop import render_loop

    parts.append(render_loop(res))
    parts.append(render_continuous(res))
    return "".join(parts)
