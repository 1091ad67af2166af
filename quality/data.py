"""Data side of tiny-synth training: vocabulary, cached mel features, tokenised examples, padded batches.

An example is the engine's exact prompt (headrouter.engine.prompt.render_prompt with the clip's audio-token count)
followed by the answer words and `<|im_end|>`; only the answer and `<|im_end|>` carry loss.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from headrouter.engine.audio import check_audio, featurize, make_feature_extractor, tokens_from_frames
from headrouter.engine.prompt import IM_END, render_prompt
from headrouter.engine.tiny import DEFAULT_WORDS
from quality.synth.tasks import vocabulary

__all__ = ["Example", "collate", "load_examples", "read_manifest", "tiny_synth_words"]

log = logging.getLogger("quality")
IGNORE = -100


def tiny_synth_words() -> list[str]:
    """The tokenizer's words: the tiny models' default words, then every word of the synthetic tasks."""
    words = list(DEFAULT_WORDS)
    return words + [w for w in vocabulary() if w not in set(words)]


def read_manifest(path: Path) -> list[dict]:
    """Manifest rows with `audio` resolved against the manifest's folder."""
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            audio = Path(row["audio"])
            row["audio_path"] = str(audio if audio.is_absolute() else Path(path).parent / audio)
            rows.append(row)
    return rows


@dataclass(frozen=True)
class Example:
    """One training/eval example: `mel` [128, L] fp16, `ids` [T] prompt+answer+eos, `prompt_len`."""

    row: dict
    mel: torch.Tensor
    ids: torch.Tensor
    prompt_len: int


def _mel(row: dict, cache: Path, extractor) -> np.ndarray:
    path = cache / f"{row['id']}.npy"
    if path.exists():
        return np.load(path)
    import soundfile as sf

    audio, sr = sf.read(row["audio_path"], dtype="float32")
    feats, _ = featurize(extractor, check_audio(audio, 0, 300.0, sr))  # [128, L]
    mel = feats.numpy().astype(np.float16)
    np.save(path, mel)
    return mel


def load_examples(rows: list[dict], tokenizer, cache: Path) -> list[Example]:
    """Tokenise rows and load (computing once, then caching as fp16 .npy) their mel features."""
    cache.mkdir(parents=True, exist_ok=True)
    extractor = make_feature_extractor(window_s=300.0)
    eos = tokenizer.convert_tokens_to_ids(IM_END)
    out = []
    for i, row in enumerate(rows):
        mel = _mel(row, cache, extractor)
        n_audio = tokens_from_frames(mel.shape[1])
        prompt_ids = tokenizer(render_prompt(row["prompt"], n_audio))["input_ids"]
        answer_ids = tokenizer(row["answer"])["input_ids"]
        ids = torch.tensor([*prompt_ids, *answer_ids, eos], dtype=torch.long)
        out.append(Example(row, torch.from_numpy(mel), ids, len(prompt_ids)))
        if (i + 1) % 2000 == 0:
            log.info("features: %d/%d", i + 1, len(rows))
    return out


def collate(examples: list[Example], pad_id: int, with_answer: bool = True) -> dict[str, torch.Tensor]:
    """Left-padded batch (as the engine pads). With `with_answer=False` only the prompts (for generation)."""
    seqs = [e.ids if with_answer else e.ids[: e.prompt_len] for e in examples]
    width = max(s.numel() for s in seqs)
    frames = max(e.mel.shape[1] for e in examples)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros(len(seqs), width, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    feats = torch.zeros(len(seqs), examples[0].mel.shape[0], frames)  # [B, 128, F]
    feat_mask = torch.zeros(len(seqs), frames, dtype=torch.long)
    for i, (e, s) in enumerate(zip(examples, seqs)):
        start = width - s.numel()
        input_ids[i, start:] = s
        attention[i, start:] = 1
        if with_answer:
            labels[i, start + e.prompt_len :] = s[e.prompt_len :]
        feats[i, :, : e.mel.shape[1]] = e.mel.float()
        feat_mask[i, : e.mel.shape[1]] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
        "input_features": feats,
        "feature_attention_mask": feat_mask,
    }
