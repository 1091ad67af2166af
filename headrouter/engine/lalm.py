"""The model engine: `LALM`, whose `generate` runs every pruning method through one path (built by
`headrouter.engine.loading.load_lalm`)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from headrouter.engine.audio import (
    SAMPLE_RATE,
    AudioInputError,
    check_audio,
)
from headrouter.engine.prompt import ASR_PROMPT
from headrouter.options import PruneOptions

__all__ = ["LALM", "AudioInputError", "GenerationOutput"]

log = logging.getLogger("headrouter")

PROFILES_FILE = "headrouter_profiles.json"


@dataclass(frozen=True)
class GenerationOutput:
    """One sample's result. audio_tokens: prunable audio tokens (N, or N + 2 with prune_audio_markers);
    kept_tokens: how many of them layers >= M saw; routing: {"alpha", "spread", "selectivity"} for the
    headrouter methods, else None; kv_bytes_*: cache bytes after prefill without / with pruning;
    prefill_s: audio encoder + LLM prefill (first forward); decode_s: the rest of generation;
    kept_index: ascending indices into the audio span of the kept tokens (all of them for vanilla).
    skipped_s: audio seconds removed before the encoder by `skip_silence` (audio_tokens counts what is left);
    silent: every encoder window was empty, so the model was not called (text "", no tokens).
    prepare_s: host-side preparation before the model runs (checks, features, tokens, the padded batch), shared
    within the batch like prefill_s; prefill_s + decode_s + prepare_s is the sample's share of the call.
    queue_s: (`LALM.stream` only) seconds the request waited in the stream's queue before its prefill.
    """

    text: str
    token_ids: list[int]
    audio_tokens: int
    kept_tokens: int
    routing: dict | None
    kv_bytes_full: int
    kv_bytes_kept: int
    prefill_s: float
    decode_s: float
    kept_index: tuple[int, ...] = ()
    logits: object = None  # [steps, V] float32 tensor, only with generate(return_logits=True)
    skipped_s: float = 0.0
    silent: bool = False
    prepare_s: float = 0.0
    queue_s: float = 0.0


class LALM:
    """A loaded audio-language model (use `load_lalm`): a stock model, its adapter (`adapters.Adapter`) and the
    pruning hooks. `generate` runs a list of clips as one padded batch; `batch_groups` says which clips may share
    one and `kv_tokens` what a call holds in its KV cache, so a caller plans its calls the way the engine runs them.
    """

    def __init__(self, model, tokenizer, feature_extractor, adapter, model_id: str, folder: Path | None):
        import torch

        from headrouter.engine.adapters.contract import Adapter

        assert isinstance(adapter, type) and issubclass(adapter, Adapter), f"not an Adapter: {adapter!r}"
        self.model = model
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.adapter = adapter
        self.model_id = model_id
        self.folder = folder
        self.family = adapter.FAMILY
        self.window_s = float(adapter.WINDOW_S)
        self.sample_rate = SAMPLE_RATE
        text_config = adapter.text_config(model)
        self.num_heads = int(text_config.num_attention_heads)
        self.num_layers = int(text_config.num_hidden_layers)
        self.layers, self.final_norm = adapter.decoder(model)
        assert len(self.layers) == self.num_layers, "decoder layer count disagrees with the config"
        audio, bos, eos = adapter.token_ids(model.config)
        vocab = tokenizer.get_vocab()
        if adapter.AUDIO_MARKERS:
            # <|audio_bos|> AUDIO* <|audio_eos|> (or the family's names): marker ids from the config, else from
            # the tokenizer
            bos_name, audio_name, eos_name = adapter.AUDIO_TOKEN_NAMES
            bos = bos if bos is not None else vocab.get(bos_name)
            eos = eos if eos is not None else vocab.get(eos_name)
            if vocab.get(audio_name) != audio or bos is None or eos is None:
                raise ValueError(
                    f"tokenizer and config disagree on audio token ids (config audio id {audio}, tokenizer "
                    f"{vocab.get(audio_name)}; bos {bos}, eos {eos})"
                )
        else:
            # no markers around the placeholders: the prunable span is the one run of audio tokens
            name = tokenizer.convert_ids_to_tokens(audio) if 0 <= audio < len(tokenizer) else None
            if name is None or vocab.get(name) != audio:
                raise ValueError(f"config audio token id {audio} is not a token of the tokenizer")
            bos = eos = None
        from headrouter.engine.hooks import AudioTokenIds

        self.token_ids = AudioTokenIds(audio=audio, bos=bos, eos=eos)
        # Real checkpoints ship a chat template with a default system prompt; the tiny models have neither.
        self.system_prompt = adapter.DEFAULT_SYSTEM if getattr(tokenizer, "chat_template", None) else None
        self.asr_prompt = _folder_settings(folder).get("asr_prompt", ASR_PROMPT)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._profiles: dict[str | None, object] = {}
        self._torch = torch
        self.eos_token_ids, self.pad_token_id = _special_ids(model, tokenizer)
        from headrouter.engine.loop import EngineOptions

        self.engine_options = EngineOptions()  # how generate runs (same tokens either way); set to change
        # the windowed audio encoders (Qwen2.5-Omni, Qwen3-Omni): every window of a length in one attention call
        self.window_batching = _batch_windows(model)

    def __repr__(self) -> str:
        return (
            f"LALM({self.model_id!r}, family={self.family}, layers={self.num_layers}, heads={self.num_heads})"
        )

    # ---- options and inputs -------------------------------------------------------------------------
    def profiles(self, path: str | None = None):
        """Profiles for `path`, else the folder's headrouter_profiles.json, else uniform; head count checked."""
        from headrouter.profiles import Profiles

        if path not in self._profiles:
            if path is not None:
                prof = Profiles.load(path, num_heads=self.num_heads)
            elif self.folder is not None and (self.folder / PROFILES_FILE).exists():
                prof = Profiles.load(self.folder / PROFILES_FILE, num_heads=self.num_heads)
            else:
                prof = Profiles.uniform(self.num_heads, model_id=self.model_id)
            prof.check_heads(self.num_heads)
            self._profiles[path] = prof
        return self._profiles[path]

    def check_options(self, options: PruneOptions):
        """Validate options against this model; returns the HeadRouter (or None) the method needs."""
        if not isinstance(options, PruneOptions):
            raise TypeError(f"options must be a PruneOptions, got {type(options).__name__}")
        if not 1 <= options.layer <= self.num_layers - 1:
            raise ValueError(
                f"layer must be in [1, {self.num_layers - 1}] for this {self.num_layers}-layer model, "
                f"got {options.layer}"
            )
        if options.skip_silence != "off" and self.adapter.gate_window_frames(self.model) is None:
            raise ValueError(
                f"skip_silence={options.skip_silence!r}: window gating is exact only for Qwen2.5-Omni's windowed "
                f"encoder, not {self.family} (use skip_silence='off')"
            )
        if options.routing is None:
            return None
        from headrouter.routing import HeadRouter

        profiles = self.profiles(options.profiles)
        # profiles record the settings they were calibrated under; other settings are an error unless overridden
        # (options.prefilter, not router_prefilter: the -noprefilter ablation is a deliberate change)
        profiles.check_settings(
            layer=options.layer,
            probe_input=options.probe_input,
            query_tokens=options.query_tokens,
            prefilter=options.prefilter,
            override=options.override_profile_settings,
        )
        return HeadRouter(profiles, prefilter=options.router_prefilter, routing=options.routing)

    def prepare(self, audio: np.ndarray, prompt: str, sample_rate: int | None = None) -> dict:
        """Check one clip and build the model inputs (batch of 1) for `prompt`."""
        return self.prepare_batch([audio], [prompt], sample_rate)

    def prepare_batch(self, audios, prompts, sample_rate: int | None = None) -> dict:
        """Check every clip and build one batch of model inputs: token ids left-padded (the generation
        convention; attention_mask marks the padding), features zero-padded on the right to the longest clip
        with their frame mask, then the family's own keyword inputs (adapter.model_inputs)."""
        return self._batch_inputs(*self._tokens_and_features(audios, prompts, sample_rate))

    def _tokens_and_features(self, audios, prompts, sample_rate):
        """Every clip checked (errors name the first bad index), then the whole batch's log-mel features in one
        torch pass on the model's device (the adapter's `featurize`, else Whisper's, `audio.log_mel`) ->
        (input_ids per clip [1, T_i], features [B, n_mels, F] float32 on the device, valid frames per clip)."""
        checked = []
        for index, (audio, prompt) in enumerate(zip(audios, prompts)):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {index}: expected str, got {type(prompt).__name__}")
            checked.append(check_audio(audio, index, self.window_s, sample_rate))
        feats, frames = self.adapter.featurize(self.feature_extractor, checked, self.device)  # [B, n_mels, F]
        rows = []
        for index, (prompt, f) in enumerate(zip(prompts, frames)):
            n = self.adapter.audio_token_count(f)
            input_ids = self.encode_prompt(prompt, n)  # [1, T]
            found = int((input_ids == self.token_ids.audio).sum())
            if found != n:
                raise AudioInputError(
                    f"audio sample {index}: prompt holds {found} audio placeholders, expected {n}"
                )
            rows.append(input_ids)
        return rows, feats, frames

    def _batch_inputs(self, rows, features, frames) -> dict:
        torch = self._torch
        width = max(int(row.shape[1]) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # [B, T]
        attention = torch.zeros(len(rows), width, dtype=torch.long)  # [B, T]
        for b, row in enumerate(rows):
            t = int(row.shape[1])
            ids[b, width - t :] = row[0]
            attention[b, width - t :] = 1
        feats = features.to(self.dtype)  # [B, n_mels, F], zero past each clip's own features
        valid = torch.tensor(frames, device=feats.device)  # [B]
        feature_mask = (torch.arange(feats.shape[-1], device=feats.device) < valid[:, None]).long()  # [B, F]
        inputs = self.adapter.model_inputs(ids, feats, feature_mask)
        inputs["attention_mask"] = attention
        return {k: v.to(self.device) for k, v in inputs.items()}

    def encode_prompt(self, prompt: str, num_audio_tokens: int):
        """input_ids [1, T] of one user turn: `num_audio_tokens` audio placeholders, then `prompt`, in the
        family's chat format (`Adapter.encode_prompt`)."""
        return self.adapter.encode_prompt(
            self.tokenizer, prompt, num_audio_tokens, self.system_prompt, self.token_ids.audio
        )

    def prune_hooks(self, options: PruneOptions, router=None, samples=None):
        """Register the pruning hooks for `options` on the model (None for vanilla); call `.remove()` after.

        samples: one `headrouter.engine.hooks.SampleInfo` per sample of the batch (random seeds, oracle categories).
        """
        from headrouter.engine.hooks import apply_pruning

        if options.method == "vanilla":
            return None
        profiles = self.profiles(options.profiles) if options.adaptive else None  # the budget's thresholds
        return apply_pruning(
            self.model, self.layers, self.final_norm, self.token_ids, options, router, samples, profiles
        )

    # ---- inference ----------------------------------------------------------------------------------
    def generate(
        self,
        audios: list[np.ndarray],
        prompts: list[str],
        options: PruneOptions | None = None,
        max_new_tokens: int = 64,
        *,
        sample_rate: int | None = None,
        min_new_tokens: int = 0,
        categories: list[str | None] | None = None,
        return_logits: bool = False,
    ) -> list[GenerationOutput]:
        """Greedy generation for each (audio, prompt) pair with audio tokens pruned per `options`.

        audios: 16 kHz mono float32 arrays (`sample_rate`, when given, must be 16000). Every input is checked
        before any compute; a bad one raises AudioInputError naming its index. All samples run as one batch:
        one prefill (left-padded; each sample scored and pruned on its own rows, so it keeps what it keeps
        alone) and one decode loop; a sample that reaches its end-of-sequence token stops there.
        Time is shared out within the batch: prefill_s in proportion to each sample's input tokens, decode_s
        in proportion to its decode steps, so the samples' times add up to the batch's.
        categories: per-sample category for the oracle router (evaluation only). return_logits: also return
        each step's next-token logits (float32 [steps, V]; for tests and evaluation, memory grows with V).
        """
        options = options if options is not None else PruneOptions()
        if len(audios) != len(prompts):
            raise ValueError(f"{len(audios)} audios but {len(prompts)} prompts")
        if categories is not None and len(categories) != len(audios):
            raise ValueError(f"{len(categories)} categories for {len(audios)} audios")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not audios:
            return []
        groups = self._exact_groups(audios)
        if len(groups) > 1:  # an encoder that padding changes: one batch per clip length
            for i, audio in enumerate(
                audios
            ):  # checked first, so an error names its index in the caller's list
                check_audio(audio, i, self.window_s, sample_rate)
            outs: list = [None] * len(audios)
            for group in groups:
                part = self.generate(
                    [audios[i] for i in group],
                    [prompts[i] for i in group],
                    options,
                    max_new_tokens,
                    sample_rate=sample_rate,
                    min_new_tokens=min_new_tokens,
                    categories=None if categories is None else [categories[i] for i in group],
                    return_logits=return_logits,
                )
                for i, out in zip(group, part):
                    outs[i] = out
            return outs
        router = self.check_options(options)
        t0 = time.perf_counter()
        batch = self.prepare_batch(audios, prompts, sample_rate)
        samples = _sample_infos(options, audios, categories)
        prepare = time.perf_counter() - t0
        lengths = batch["attention_mask"].sum(dim=1).tolist()  # [B] input tokens: the share of preparation
        if options.skip_silence != "off":
            args = (options, router, samples, max_new_tokens, min_new_tokens, return_logits)
            outs = self._generate_gated(batch, audios, *args)
        else:
            outs = self._generate_batch(
                batch, options, router, samples, max_new_tokens, min_new_tokens, return_logits
            )
        return [replace(out, prepare_s=prepare * n / sum(lengths)) for out, n in zip(outs, lengths)]

    def stream(self, requests, options: PruneOptions | None = None, max_new_tokens: int = 64, *, slots: int = 8,
               refill_fraction: float = 1 / 16, sample_rate: int | None = None, stats=None):  # fmt: skip
        """Continuous batching: (key, GenerationOutput) for each `headrouter.engine.stream.Request` as soon as it
        finishes, over `slots` decode slots refilled from the queue (or (key, exception) for a request that fails
        on its own). Each request gets the tokens it gets alone from `generate`, with its own max/min new tokens
        (at most `max_new_tokens`); queue_s is its wait. `stats` (a `StreamStats`) collects steps, slot occupancy
        and refills. See `headrouter.engine.stream` for the refill rule and slot capacity."""
        from headrouter.engine.stream import stream

        options = options if options is not None else PruneOptions()
        return stream(self, requests, options, slots=slots, max_new_tokens=max_new_tokens,
                      refill_fraction=refill_fraction, sample_rate=sample_rate, stats=stats)  # fmt: skip

    def _gate(self, batch, audios, options):
        """headrouter.engine.gating.gate_batch for this model: (batch' or None, gates, live row indices)."""
        from headrouter.engine.gating import gate_batch

        window = self.adapter.gate_window_frames(self.model)
        return gate_batch(
            batch, audios, options.skip_silence, self.token_ids.audio, self.pad_token_id, window
        )

    def _generate_gated(self, batch, audios, options, router, samples, *args):
        """Generation with empty windows removed before the encoder; silent clips get an empty result."""
        batch, gates, live = self._gate(batch, audios, options)
        outs = []
        if live:
            live_samples = None if samples is None else [samples[i] for i in live]
            outs = self._generate_batch(batch, options, router, live_samples, *args)
        # kv_bytes_full: what the stock model would cache for the ungated prompt (gating's saving counts)
        lengths = batch["attention_mask"].sum(dim=1).tolist() if live else []
        results = {
            i: replace(out, kv_bytes_full=out.kv_bytes_full * (t + gates[i].skipped_tokens) // t)
            for i, out, t in zip(live, outs, lengths)
        }
        silent = GenerationOutput("", [], 0, 0, None, 0, 0, 0.0, 0.0, silent=True)
        return [replace(results.get(i, silent), skipped_s=g.skipped_s) for i, g in enumerate(gates)]

    def _generate_batch(self, batch, options, router, samples, max_new_tokens, min_new_tokens, return_logits):
        """One padded batch: the pruned prefill and greedy decoding, on the engine's own loop where the family
        allows it (`loop_fallback` says why not), else on transformers' generate; the same tokens either way."""
        handle = self.prune_hooks(options, router, samples)
        kwargs = dict(
            max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, return_logits=return_logits
        )
        parts = self.loop_parts()
        if parts is not None and self.engine_options.loop == "owned":
            from headrouter.engine.owned import run_owned

            call = run_owned(
                self, parts, self.engine_options, batch, handle, options.layer, sync=self._sync, **kwargs
            )
        else:
            call = self._call_stock(batch, handle, **kwargs)
        return self._results(batch, options, call)

    def loop_parts(self):
        """The stock modules the engine's own loop drives, or None when this family must use transformers'
        generate (the reason is in `loop_fallback`)."""
        if not hasattr(self, "_loop_parts"):
            from headrouter.engine.loop import find_parts

            self._loop_parts, self.loop_fallback = find_parts(self.model, self.layers, self.final_norm)
            if self.loop_fallback is not None:
                log.info("%s decodes with transformers' generate: %s", self.model_id, self.loop_fallback)
        return self._loop_parts

    def _call_stock(self, batch, handle, *, max_new_tokens, min_new_tokens, return_logits):
        """The previous engine: transformers' generate with the pruning hooks on every step."""
        from headrouter.engine.kv import per_token_bytes
        from headrouter.engine.owned import CallResult, _last_position_only

        torch = self._torch
        width = int(batch["input_ids"].shape[1])
        marks: dict = {}

        def after_forward(module, args, kwargs, output):
            if "prefill_end" not in marks:
                self._sync()
                marks["prefill_end"] = time.perf_counter()
                marks["per_token"] = per_token_bytes(output.cache)

        timer = self.model.register_forward_hook(after_forward, with_kwargs=True)
        head = self.model.get_output_embeddings().register_forward_pre_hook(_last_position_only)
        try:
            with torch.inference_mode():
                self._sync()
                start = time.perf_counter()
                out = self.model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    use_cache=True,
                    pad_token_id=self.pad_token_id,
                    return_dict_in_generate=True,
                    output_logits=return_logits,
                )
                self._sync()
                end = time.perf_counter()
        finally:
            timer.remove()
            head.remove()
            if handle is not None:
                handle.remove()
        logits = None
        if return_logits:
            stacked = torch.stack([step.float() for step in out.logits])  # [steps, B, V]
            logits = [stacked[:, b] for b in range(stacked.shape[1])]
        tokens = [row[width:].tolist() for row in out.sequences]
        prefill = marks["prefill_end"] - start
        return CallResult(tokens, logits, prefill, end - marks["prefill_end"], marks["per_token"], handle, 0)

    def _results(self, batch, options, call) -> list[GenerationOutput]:
        """Per-sample GenerationOutput of one call: tokens cut after the first end-of-sequence, time shared by
        input tokens (prefill) and decode steps (decode), cache bytes from the measured bytes per token."""
        lengths = [int(n) for n in batch["attention_mask"].sum(dim=1).tolist()]  # unpadded input lengths
        width = int(batch["input_ids"].shape[1])
        tokens = [self._until_eos(row) for row in call.tokens]
        steps = [max(len(t) - 1, 0) for t in tokens]  # decode steps after the prefill's token
        per_token, handle, m = call.per_token, call.handle, options.layer
        results = []
        for b, new in enumerate(tokens):
            record = handle.records[b] if handle is not None else None
            own_ids = batch["input_ids"][b, width - lengths[b] :]  # [T_b] without the left padding
            audio_tokens, kept_index, routing = self._summary(own_ids, options, record)
            kept_len = (
                int(record.keep.numel()) if record is not None and record.keep is not None else lengths[b]
            )
            full = sum(per_token) * lengths[b]
            kept = sum(per_token[:m]) * lengths[b] + sum(per_token[m:]) * kept_len
            results.append(
                GenerationOutput(
                    text=self.tokenizer.decode(new, skip_special_tokens=True),
                    token_ids=new,
                    audio_tokens=audio_tokens,
                    kept_tokens=len(kept_index),
                    routing=routing,
                    kv_bytes_full=full,
                    kv_bytes_kept=kept if record is not None else full,
                    prefill_s=call.prefill_s * lengths[b] / sum(lengths),
                    decode_s=call.decode_s * steps[b] / sum(steps) if sum(steps) else 0.0,
                    kept_index=kept_index,
                    logits=None if call.logits is None else call.logits[b][: len(new)],  # [steps, V]
                )
            )
        return results

    def _until_eos(self, tokens: list[int]) -> list[int]:
        """A sample's new tokens up to and including its first end-of-sequence token (the batch pads after it)."""
        for i, t in enumerate(tokens):
            if t in self.eos_token_ids:
                return tokens[: i + 1]
        return tokens

    def _summary(self, input_ids, options, record):
        if record is None:  # vanilla: every prunable token kept
            from headrouter.engine.hooks import audio_spans

            spans = audio_spans(input_ids, self.token_ids, options)
            n = 0 if spans is None else int(spans[0].numel())
            return n, tuple(range(n)), None
        routing = None
        if record.selection is not None:
            sel = record.selection
            routing = {
                "alpha": tuple(float(a) for a in sel.alpha.tolist()),
                "spread": float(sel.spread),
                "selectivity": [float(s) for s in sel.selectivity.tolist()],
            }
        if record.keep_audio is None:  # a sample without audio
            return 0, (), routing
        return record.audio_tokens, tuple(record.keep_audio.tolist()), routing

    def prefill_logits(self, audio, prompt, options: PruneOptions | None = None, category: str | None = None):
        """Next-token logits [V] (float32) after one pruned prefill, and the hooks' PruneRecord (None for vanilla).

        audio/prompt may also be lists (a batch): then logits are [B, V] and the record a list of records.
        """
        batched = isinstance(prompt, list | tuple)
        audios, prompts = (list(audio), list(prompt)) if batched else ([audio], [prompt])
        categories = category if batched else [category]
        options = options if options is not None else PruneOptions(method="vanilla")
        groups = self._exact_groups(audios)
        if len(groups) > 1:  # as in generate: an encoder that padding changes gets one batch per clip length
            parts = {}
            for group in groups:
                cats = None if categories is None else [categories[i] for i in group]
                logits, records = self.prefill_logits(
                    [audios[i] for i in group], [prompts[i] for i in group], options, cats
                )
                for j, i in enumerate(group):
                    parts[i] = (logits[j], None if records is None else records[j])
            rows = [parts[i] for i in range(len(audios))]
            records = None if rows[0][1] is None else [r for _, r in rows]
            return self._torch.stack([x for x, _ in rows]), records
        router = self.check_options(options)
        batch = self.prepare_batch(audios, prompts)
        if options.skip_silence != "off":
            batch, gates, live = self._gate(batch, audios, options)
            if len(live) < len(audios):
                i = next(i for i, g in enumerate(gates) if g.silent)
                raise AudioInputError(f"audio sample {i}: every encoder window is empty (silent)")
        handle = self.prune_hooks(options, router, _sample_infos(options, audios, categories))
        if "position_ids" not in batch and not bool(batch["attention_mask"].all()):
            # a padded batch: the positions generate() would use (from the mask), so each row is where it is alone
            batch["position_ids"] = self.model._prepare_position_ids_for_generation(
                batch["input_ids"], dict(batch)
            )
        try:
            with self._torch.inference_mode():
                logits = self.model(**batch, use_cache=True).logits[:, -1].float()  # [B, V]
        finally:
            if handle is not None:
                handle.remove()
        records = handle.records if handle is not None else None
        if batched:
            return logits, records
        return logits[0], (records[0] if records is not None else None)

    def batch_groups(self, num_samples: list[int]) -> list[list[int]]:
        """Indices of clips (given by their sample counts) that may share one padded `generate` call, in order of
        first appearance. Every family's encoder masks feature padding, so all clips go together, except where its
        adapter's `batch_group` says otherwise (Phi-4-multimodal's Conformer: clips of one length only;
        Qwen3-Omni: clips under 1 s by length, the rest together). A caller that plans its calls within these
        groups is never regrouped by the engine."""
        by_key: dict = {}
        for i, n in enumerate(num_samples):
            by_key.setdefault(self.adapter.batch_group(int(n)), []).append(i)
        return list(by_key.values())

    def _exact_groups(self, audios) -> list[list[int]]:
        return self.batch_groups([int(np.asarray(a).shape[-1]) for a in audios])

    def token_counts(self, num_samples: int, prompt: str) -> tuple[int, int]:
        """(input tokens, audio tokens) a clip of `num_samples` 16 kHz samples with `prompt` becomes, without
        computing features (the batch planner's cost)."""
        n = self.adapter.audio_token_count(self.adapter.frame_count(num_samples))
        return int(self.encode_prompt(prompt, n).shape[1]), int(n)

    def kv_tokens(self, counts: list[tuple[int, int]], options: PruneOptions, max_new_tokens: int) -> float:
        """KV-cache tokens of one `generate` call, per decoder layer on average: what the engine allocates for it.

        counts: (input tokens T_b, audio tokens N_b) per clip, from `token_counts`. Layers < M cache every input
        token, layers >= M the kept ones, every layer the new ones, and a padded call holds B rows of its longest:
            K_b = T_b - Na_b + kept(Na_b)   (K_b = T_b for vanilla, or a clip without audio)
            slots = B * (M * (max_b T_b + new) + (L - M) * (max_b K_b + new)),   returned as slots / L,
        with Na_b the prunable audio tokens (N_b, or N_b + 2 with `prune_audio_markers` on a family with markers),
        kept(Na) the most tokens `options` keeps (`_kept_bound`), new = max_new_tokens, M = options.layer, L layers.
        An upper bound: silence gating only removes tokens.
        """
        if not counts:
            return 0.0
        markers = 2 if options.prune_audio_markers and self.token_ids.bos is not None else 0

        def kept_length(t: int, n: int) -> int:  # K_b
            if options.method == "vanilla" or n == 0:
                return t
            na = n + markers
            return t - na + _kept_bound(na, options)

        longest = max(t for t, _ in counts)  # max_b T_b
        kept = max(kept_length(t, n) for t, n in counts)  # max_b K_b
        from headrouter.engine.owned import kv_slots

        slots = kv_slots(len(counts), self.num_layers, options.layer, longest, kept, max_new_tokens)
        return slots / self.num_layers

    @property
    def answer_end_id(self) -> int:
        """The id of the token that closes an assistant turn (`Adapter.END_OF_ANSWER`: <|im_end|> for the Qwen
        families, <|end|> for Phi-4-multimodal, </s> for Voxtral); calibration scores an answer through it."""
        token = self.adapter.END_OF_ANSWER
        found = self.tokenizer.convert_tokens_to_ids(token)
        if found is None or found == self.tokenizer.unk_token_id:
            raise ValueError(f"{self.family}: the tokenizer has no {token!r} (Adapter.END_OF_ANSWER)")
        return int(found)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)


def _kept_bound(na: int, options: PruneOptions) -> int:
    """The most of `na` prunable audio tokens one sample keeps under `options` (the planner's upper bound): a fixed
    budget keeps exactly floor(na * retain), an adaptive one at most floor(na * its ceiling fraction)
    (`PruneOptions.max_kept_fraction`)."""
    from headrouter.routing import keep_count

    return keep_count(na, options.max_kept_fraction)


def _batch_windows(model):
    """Swap a windowed audio encoder's attention for the one-call-per-window-length version (None if the
    model has no such encoder); `.remove()` on the handle restores the stock per-window loop."""
    from headrouter.engine.encoder import batch_encoder_windows

    tower = next((m for m in model.modules() if type(m).__name__ in WINDOWED_ENCODERS), None)
    return batch_encoder_windows(tower) if tower is not None else None


# audio encoders whose SDPA/eager path calls attention once per window (transformers 5.24)
WINDOWED_ENCODERS = ("Qwen2_5OmniAudioEncoder", "Qwen3OmniMoeAudioEncoder")


def _special_ids(model, tokenizer) -> tuple[frozenset[int], int]:
    """(end-of-sequence ids that stop a sample, the id that pads a batch) from the generation config/tokenizer."""
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    eos_ids = frozenset(eos if isinstance(eos, list | tuple) else [] if eos is None else [eos])
    for pad in (getattr(tokenizer, "pad_token_id", None), getattr(gen, "pad_token_id", None)):
        if pad is not None:
            return eos_ids, int(pad)
    return eos_ids, min(eos_ids) if eos_ids else 0


def _sample_infos(options: PruneOptions, audios, categories) -> list | None:
    """Per-sample SampleInfo: the random method's seed mixed from options.seed and the clip's samples (a
    different, reproducible mask per clip, whatever batch it runs in), and the oracle's category."""
    from headrouter.engine.hooks import SampleInfo

    if options.method == "vanilla":
        return None
    infos = []
    for i, audio in enumerate(audios):
        digest = hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
        digest.update(int(options.seed).to_bytes(8, "little", signed=True))
        seed = int.from_bytes(digest.digest()[:8], "little") & (2**63 - 1)
        infos.append(SampleInfo(seed=seed, category=None if categories is None else categories[i]))
    return infos


def _folder_settings(folder: Path | None) -> dict:
    """Optional headrouter.json of a model folder: prompts the model was trained with ({"asr_prompt": ...})."""
    path = folder / "headrouter.json" if folder is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON object: {e}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return settings
