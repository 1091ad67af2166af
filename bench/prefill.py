"""Prefill benchmark harness: a Qwen2.5-Omni thinker of the 3B shape with dummy weights, pruned by the engine's hooks.

The model is the stock `Qwen2_5OmniThinkerForConditionalGeneration` built from a config, wrapped in the engine's
`LALM`, and pruned through `LALM.check_options` / `LALM.prune_hooks` (headrouter.engine.hooks.apply_pruning): the
product's code path. Two benchmark-side hooks stand in for what a real input would bring:
- the `<|AUDIO|>` rows of the token embeddings are replaced by fixed random vectors (fake audio-encoder outputs,
  so the scorers see distinct tokens); the audio encoder itself is costed analytically (bench.flops);
- the thinker's inner model returns only the last position, so lm_head runs once per prefill (see
  `LM_HEAD_NOTE`; `last_position_only=False` measures what the engine does today).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace

from bench.flops import TextShape

__all__ = [
    "LM_HEAD_NOTE",
    "BenchModel",
    "Shape",
    "measure_peak",
    "measure_peak_cuda",
    "peak_memory_child",
    "scaled_3b_shape",
    "full_3b_shape",
]

log = logging.getLogger("bench")

PROMPT = (
    "Please transcribe the audio and then answer the question : what did the speaker say about the meeting ?"
)
LM_HEAD_NOTE = (
    "transformers 5.24's Qwen2_5OmniThinkerForConditionalGeneration.forward has no logits_to_keep, so the "
    "engine's prefill applies lm_head to every kept position; the benchmark keeps the last position only"
)


@dataclass(frozen=True)
class Shape:
    """The benchmark model: decoder shape, pruning layer M, device and dtype."""

    name: str
    text: TextShape
    layer: int = 2
    device: str = "cpu"
    dtype: str = "float32"


def scaled_3b_shape(hidden: int = 256, layers: int = 36) -> Shape:
    """Qwen2.5-Omni-3B text shape (36 layers, 16 heads, 2 KV heads, MLP ratio 11008/2048) at width `hidden`."""
    heads = 16
    return Shape(
        name=f"omni3b-shape-h{hidden}-l{layers}",
        text=TextShape(
            hidden=hidden,
            intermediate=round(hidden * 11008 / 2048),
            layers=layers,
            heads=heads,
            kv_heads=2,
            head_dim=hidden // heads,
            vocab=0,  # the word-level tokenizer's size (lm_head on one position: negligible either way)
        ),
    )


def full_3b_shape(device: str = "cuda", dtype: str = "bfloat16") -> Shape:
    """The real Qwen2.5-Omni-3B thinker text config (hidden 2048, vocab 151936) for a GPU run."""
    from bench.flops import OMNI_3B_TEXT

    return Shape(name="omni3b-full", text=OMNI_3B_TEXT, device=device, dtype=dtype)


def thinker_config(t: TextShape, tokenizer, vocab: int):
    """A Qwen2.5-Omni thinker config with the text shape `t` (the benchmark's model, prefill and pipeline)."""
    from headrouter.engine.tiny import tiny_thinker_config

    return tiny_thinker_config(
        vocab,
        tokenizer,
        hidden_size=t.hidden,
        num_layers=t.layers,
        num_heads=t.heads,
        num_kv_heads=t.kv_heads,
        intermediate_size=t.intermediate,
    )


class BenchModel:
    """The LALM plus the inputs and hooks of the benchmark; `prefill(method, retain)` times one prefill."""

    def __init__(self, shape: Shape, seed: int = 0, last_position_only: bool = True):
        import torch
        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        from headrouter.engine import LALM
        from headrouter.engine.adapters.qwen2_5_omni import Qwen25Omni
        from headrouter.engine.audio import make_feature_extractor
        from headrouter.engine.tiny import build_word_tokenizer

        torch.manual_seed(seed)
        tok = build_word_tokenizer()
        t = shape.text
        vocab = max(len(tok), t.vocab)
        self.shape = replace(shape, text=replace(t, vocab=vocab))
        config = thinker_config(t, tok, vocab)
        dtype = getattr(torch, shape.dtype)
        with torch.device(shape.device):
            model = Qwen2_5OmniThinkerForConditionalGeneration._from_config(
                config, attn_implementation="sdpa", dtype=dtype
            )
        model.eval()
        self.lalm = LALM(model, tok, make_feature_extractor(), Qwen25Omni, model_id=shape.name, folder=None)
        self.torch = torch
        self.device = torch.device(shape.device)
        self._fake: dict[int, object] = {}
        self._inputs: dict[int, dict] = {}
        text_model = model.model.language_model
        self._hooks = [text_model.embed_tokens.register_forward_hook(self._fake_audio)]
        self._last_hook = None
        self.set_last_position_only(last_position_only)
        self._layer_m = self.lalm.layers[shape.layer]

    def set_last_position_only(self, flag: bool) -> None:
        """True: lm_head on the last position only, as the engine does; False: on every position (stock prefill)."""
        if self._last_hook is not None:
            self._last_hook.remove()
            self._last_hook = None
        if flag:
            self._last_hook = self.lalm.model.model.register_forward_hook(self._last_position)
        self.last_position_only = flag

    # ---- benchmark-side hooks --------------------------------------------------------------------------
    def _fake_audio(self, module, args, output):
        ids = args[0]  # [1, T]
        audio = ids[0] == self.lalm.token_ids.audio  # [T]
        n = int(audio.sum())
        if n == 0:
            return output
        if n not in self._fake:
            g = self.torch.Generator().manual_seed(n)
            scale = float(module.weight[:4096].float().std())
            fake = self.torch.randn(n, output.shape[-1], generator=g) * scale  # [Na, D]
            self._fake[n] = fake.to(output.device, output.dtype)
        output = output.clone()
        output[0, audio] = self._fake[n]
        return output

    @staticmethod
    def _last_position(module, args, output):
        output.last_hidden_state = output.last_hidden_state[:, -1:]  # [1, T_kept, D] -> [1, 1, D]
        return output

    # ---- inputs and one prefill ------------------------------------------------------------------------
    def inputs(self, audio_tokens: int) -> dict:
        """input_ids [1, T] of the prompt template with `audio_tokens` placeholders, and its attention mask."""
        if audio_tokens not in self._inputs:
            from headrouter.engine.prompt import render_prompt

            text = render_prompt(PROMPT, audio_tokens)
            ids = self.lalm.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            ids = ids.to(self.device)
            self._inputs[audio_tokens] = {"input_ids": ids, "attention_mask": self.torch.ones_like(ids)}
        return self._inputs[audio_tokens]

    def prefill(self, audio_tokens: int, method: str, retain: float) -> dict:
        """One prefill: {"seconds", "cpu_s" (process CPU time), "prune_s" (time inside the pruning hook at
        layer M), "early_s"/"late_s" (decoder layers < M / >= M), the same three as "*_cpu_s", "seq_len",
        "kept_len", "audio_tokens", "kept_audio", "kv_bytes_full", "kv_bytes_kept"}."""
        from headrouter.engine.kv import kv_bytes
        from headrouter.options import PruneOptions

        torch = self.torch
        inputs = self.inputs(audio_tokens)
        seq_len = int(inputs["input_ids"].shape[1])
        opts = PruneOptions(method=method, retain=retain, layer=self.shape.layer)
        router = self.lalm.check_options(opts)
        marks: dict = {}
        # Per-layer start/end marks (CPU only: a sync per layer would serialize a GPU's kernel queue). The
        # start hooks go before the pruning hooks, so layer M's time includes the pruning hook; subtracted below.
        timers = []
        if self.device.type == "cpu":
            for i, layer in enumerate(self.lalm.layers):
                timers.append(layer.register_forward_pre_hook(lambda *a, i=i: self._mark(marks, ("in", i))))
                timers.append(layer.register_forward_hook(lambda *a, i=i: self._mark(marks, ("out", i))))
        # Bracket the pruning pre-hook of layer M (registered between these two): its time is the probe,
        # routing/scoring, selection and the slicing of the hidden states.
        before = self._layer_m.register_forward_pre_hook(lambda *a: self._mark(marks, "m_in"))
        handle = self.lalm.prune_hooks(opts, router)
        after = self._layer_m.register_forward_pre_hook(lambda *a: self._mark(marks, "m_out"))
        try:
            with torch.inference_mode():
                self._sync()
                start, cpu0 = time.perf_counter(), time.process_time()
                out = self.lalm.model(**inputs, use_cache=True)
                self._sync()
                seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu0
        finally:
            for t in (*timers, before, after):
                t.remove()
            if handle is not None:
                handle.remove()
        full, kept = kv_bytes(out.cache, seq_len)
        rec = handle.record if handle is not None else None
        kept_audio = rec.kept_tokens if rec is not None else audio_tokens
        audio = rec.audio_tokens if rec is not None else audio_tokens
        m = self.shape.layer
        out_row = {"seconds": seconds, "cpu_s": cpu_s}
        for clock, suffix in ((0, "_s"), (1, "_cpu_s")):  # wall clock, then process CPU time
            prune = (marks["m_out"][clock] - marks["m_in"][clock]) if handle is not None else 0.0
            n_layers = len(self.lalm.layers) if timers else 0
            spans = [marks[("out", i)][clock] - marks[("in", i)][clock] for i in range(n_layers)]
            out_row["prune" + suffix] = prune
            # decoder layers < M (full length) and >= M (kept length, pruning hook excluded); None on GPU
            out_row["early" + suffix] = sum(spans[:m]) if timers else None
            out_row["late" + suffix] = sum(spans[m:]) - prune if timers else None
        return {
            **out_row,
            "seq_len": seq_len,
            "kept_len": seq_len - audio + kept_audio,
            "audio_tokens": audio,
            "kept_audio": kept_audio,
            "kv_bytes_full": full,
            "kv_bytes_kept": kept,
        }

    def _mark(self, marks: dict, key) -> None:
        self._sync()
        marks[key] = (time.perf_counter(), time.process_time())

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)


# ---- peak memory of one prefill, in a fresh process ----------------------------------------------------
def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory_fields(r: dict) -> dict:
    return {k: r[k] for k in ("seq_len", "kept_len", "kv_bytes_full", "kv_bytes_kept")}


def measure_peak(shape: Shape, audio_tokens: int, method: str, retain: float, last_only: bool = True) -> dict:
    """In this (fresh) process: build the model, then one prefill with the peak RSS measured around it only."""
    import gc

    bench = BenchModel(shape, last_position_only=last_only)
    bench.inputs(audio_tokens)
    gc.collect()
    reset = _reset_peak_rss()
    base = status_kib("VmRSS") * 1024
    r = bench.prefill(audio_tokens, method, retain)
    peak = status_kib("VmHWM") * 1024
    return {
        "kind": "cpu_peak_rss" if reset else "cpu_peak_rss_incl_build",
        "before_bytes": base,
        "peak_bytes": peak,
        "prefill_extra_bytes": peak - base,
        **_memory_fields(r),
    }


def measure_peak_cuda(bench: BenchModel, audio_tokens: int, method: str, retain: float) -> dict:
    """On the GPU, in `bench`'s process: peak bytes allocated by torch during one prefill."""
    torch = bench.torch
    bench.inputs(audio_tokens)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    r = bench.prefill(audio_tokens, method, retain)
    peak = torch.cuda.max_memory_allocated()
    return {
        "kind": "cuda_peak_allocated",
        "before_bytes": base,
        "peak_bytes": peak,
        "prefill_extra_bytes": peak - base,
        **_memory_fields(r),
    }


def peak_memory_child(
    shape: Shape,
    audio_tokens: int,
    method: str,
    retain: float,
    last_only: bool = True,
    timeout_s: float = 600,
) -> dict:
    """`measure_peak` in a fresh Python process (nothing allocated by earlier runs can hide or inflate it)."""
    from dataclasses import asdict

    spec = {"shape": asdict(shape), "audio_tokens": audio_tokens, "method": method, "retain": retain}
    spec["last_only"] = last_only
    proc = subprocess.run(
        [sys.executable, "-m", "bench.prefill", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child_main(arg: str) -> None:
    spec = json.loads(arg)
    s = spec["shape"]
    shape = Shape(
        name=s["name"], text=TextShape(**s["text"]), layer=s["layer"], device=s["device"], dtype=s["dtype"]
    )
    args = (shape, spec["audio_tokens"], spec["method"], spec["retain"], spec["last_only"])
    print(json.dumps(measure_peak(*args)))


if __name__ == "__main__":
    _child_main(sys.argv[1])
