"""tiny-synth: the committed model loads offline and answers fresh synthetic clips; training data layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from headrouter.engine.prompt import IM_END
from headrouter.engine.tiny import build_word_tokenizer
from quality.data import IGNORE, Example, collate, tiny_synth_words
from quality.scoring import score
from quality.synth.tasks import TASKS, format_prompt, make_sample

MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny-synth"
UNSEEN_SEED = 4242  # training used train/0, the reported evaluation test/2


@pytest.fixture(scope="module")
def tiny_synth():
    from headrouter import load_lalm

    return load_lalm("tiny-synth")


def _row(sample):
    return {
        "task": sample.task,
        "answer": sample.answer,
        "choices": list(sample.choices) if sample.choices else None,
    }


def test_model_folder_is_complete_and_small():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json", "training_info.json"):  # fmt: skip
        assert (MODEL / name).is_file(), name
    assert (MODEL / "model.safetensors").stat().st_size < 20 * 2**20
    info = json.loads((MODEL / "training_info.json").read_text())
    assert "partial" not in info and info["steps"] > 0


def test_reported_metrics_match_the_per_sample_results():
    info = json.loads((MODEL / "training_info.json").read_text())
    rows = [json.loads(line) for line in (MODEL / "test_results.jsonl").read_text().splitlines()]
    assert len(rows) == info["test"]["metrics"]["all"]["n"]
    for task in TASKS:
        scores = [r["score"] for r in rows if r["task"] == task]
        assert info["test"]["metrics"][task]["score"] == pytest.approx(np.mean(scores))


def test_loads_offline_and_answers_fresh_clips(tiny_synth, monkeypatch):
    from headrouter import PruneOptions

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    samples = [make_sample("test", UNSEEN_SEED, i) for i in range(len(TASKS))]  # one clip per task
    outs = tiny_synth.generate(
        [s.audio for s in samples],
        [format_prompt(s.question, s.choices) for s in samples],
        PruneOptions(method="vanilla"),
        max_new_tokens=12,
    )
    scores = {s.task: score(_row(s), o.text) for s, o in zip(samples, outs)}
    digits = next(o.text for s, o in zip(samples, outs) if s.task == "digits")
    assert scores["digits"] == 1.0, digits  # an exact transcript of a fresh clip
    assert sum(scores.values()) >= len(TASKS) - 1, scores


def test_collate_puts_loss_only_on_answer_and_end_token():
    tok = build_word_tokenizer(tiny_synth_words())
    prompt = tok("<|im_start|>user\n<|audio_bos|><|AUDIO|><|AUDIO|><|audio_eos|>transcribe the digits")[
        "input_ids"
    ]
    answer = tok("three one")["input_ids"]
    assert tok.unk_token_id not in prompt + answer
    eos = tok.convert_tokens_to_ids(IM_END)
    long = Example({}, torch.zeros(128, 9), torch.tensor([*prompt, *answer, eos]), len(prompt))
    short = Example({}, torch.ones(128, 5), torch.tensor([*prompt[:-1], *answer, eos]), len(prompt) - 1)
    batch = collate([long, short], tok.pad_token_id)
    width = len(prompt) + len(answer) + 1
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"][1].tolist() == [0] + [1] * (width - 1)  # left padding, like the engine
    for row in batch["labels"]:
        assert row[row != IGNORE].tolist() == [*answer, eos]
    assert batch["feature_attention_mask"].sum(1).tolist() == [9, 5]
    assert batch["input_features"][1, :, 5:].abs().sum() == 0


def test_calibration_is_deterministic_and_loads(tmp_path):
    from headrouter import Profiles
    from headrouter.calibration import CalibrateOptions, calibrate
    from quality.synth.generate import write_split

    manifest = write_split(tmp_path / "data", "calib", seed=UNSEEN_SEED, n=2 * len(TASKS), long_fraction=0.0)
    paths = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.json"
        calibrate(CalibrateOptions(model="tiny-synth", manifest=str(manifest), out=str(out), ablation_samples=1,
                                   routing_samples=2))  # fmt: skip
        paths.append(out)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    prof = Profiles.load(paths[0], num_heads=8)
    assert prof.calibration["method"] == "head-ablation"
    assert prof.centers[1] == pytest.approx((prof.centers[0] + prof.centers[2]) / 2)
    assert sum(prof.semantic) == pytest.approx(8.0) and sum(prof.acoustic) == pytest.approx(8.0)
