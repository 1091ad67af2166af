"""Engine inputs: bad audio/options name the sample, features never truncate, tokenizer/prompt, model loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from headrouter import AudioInputError, Profiles, PruneOptions, load_lalm
from headrouter.engine.audio import audio_token_count, featurize, make_feature_extractor
from headrouter.engine.loading import resolve_model
from headrouter.engine.prompt import SPECIAL_TOKENS, render_prompt
from headrouter.engine.tiny import build_tiny_random, build_word_tokenizer, tiny_thinker_config
from tests.families import FAMILIES
from tests.test_engine import PROMPT, clip, tiny

GOOD = clip(0.5)


@pytest.mark.parametrize("alias", FAMILIES)
@pytest.mark.parametrize(
    ("bad", "kwargs", "match"),
    [
        (np.zeros(0, np.float32), {}, "empty"),
        (np.array([0.1] * 800 + [np.nan] * 10, np.float32), {}, "NaN or inf"),
        (np.array([0.1] * 800 + [np.inf], np.float32), {}, "NaN or inf"),
        (np.zeros(639, np.float32), {}, "shorter than one audio token"),
        ("too long", {}, "longer than the model window of {window:g} s"),
        (np.zeros((2, 16000), np.float32), {}, "mono"),
        (GOOD, {"sample_rate": 44100}, "sample rate 44100"),
    ],
)
def test_bad_audio_is_rejected_naming_the_sample(alias, bad, kwargs, match):
    lalm = tiny(alias)
    if isinstance(bad, str):  # one sample past the family's window (never truncated)
        bad = np.zeros(round(lalm.window_s * 16000) + 1, np.float32)
        match = match.format(window=lalm.window_s)
    audios = [GOOD, GOOD, bad] if not kwargs else [GOOD, bad]
    index = len(audios) - 1 if not kwargs else 0  # a wrong rate applies to the first sample already
    with pytest.raises(AudioInputError, match=match) as err:
        lalm.generate(audios, [PROMPT] * len(audios), PruneOptions(), max_new_tokens=1, **kwargs)
    assert f"audio sample {index}" in str(err.value)


def test_qwen2_audio_window_is_30_seconds():
    lalm = tiny("tiny-random-qwen2-audio")
    assert lalm.window_s == 30.0 and lalm.sample_rate == 16000
    with pytest.raises(
        AudioInputError,
        match=r"audio sample 1: 480160 samples \(30.01 s\) is longer than the model window of 30 s",
    ):
        lalm.generate([GOOD, np.zeros(30 * 16000 + 160, np.float32)], [PROMPT] * 2, max_new_tokens=1)
    out = lalm.generate(
        [np.full(30 * 16000, 0.01, np.float32)], [PROMPT], PruneOptions(retain=0.1), max_new_tokens=1
    )
    assert out[0].audio_tokens == 750 and out[0].kept_tokens == 75


def test_bad_options_are_rejected(tmp_path):
    lalm = tiny()
    for retain in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="retain"):
            PruneOptions(retain=retain)
    with pytest.raises(ValueError, match=r"layer must be in \[1, 3\]"):
        lalm.generate([GOOD], [PROMPT], PruneOptions(layer=4), max_new_tokens=1)
    with pytest.raises(ValueError, match="method"):
        PruneOptions(method="fastv2")
    Profiles.uniform(3).save(tmp_path / "p.json")
    with pytest.raises(ValueError, match="3 head weights but the model has 4"):
        lalm.generate([GOOD], [PROMPT], PruneOptions(profiles=str(tmp_path / "p.json")), max_new_tokens=1)
    with pytest.raises(ValueError, match="prompts"):
        lalm.generate([GOOD, GOOD], [PROMPT], max_new_tokens=1)


def test_long_audio_is_never_truncated():
    fe = make_feature_extractor(300.0)
    audio = np.full(45 * 16000, 0.01, np.float32)  # past Whisper's default 30 s cut
    feats, frames = featurize(fe, audio)
    assert frames == feats.shape[1] == 4500 and audio_token_count(audio.size) == 1125
    assert audio_token_count(640) == 1 and audio_token_count(16000) == 25


def test_word_tokenizer_and_prompt_template():
    tok = build_word_tokenizer(["hello", "world", "hello"])
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(7))
    text = render_prompt("hello world", 3, system="hello")
    assert text == (
        "<|im_start|>system\nhello<|im_end|>\n<|im_start|>user\n"
        "<|audio_bos|><|AUDIO|><|AUDIO|><|AUDIO|><|audio_eos|>hello world<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|AUDIO|>")) == 3
    assert tok.decode(ids, skip_special_tokens=True) == "system hello user hello world assistant"
    assert tok.convert_tokens_to_ids("unseen") == tok.unk_token_id
    config = tiny_thinker_config(len(tok), tok, hidden_size=64, num_heads=8, num_kv_heads=2)
    assert config.audio_token_id == 5 and config.text_config.rope_parameters["mrope_section"] == [1, 1, 2]
    with pytest.raises(ValueError):
        render_prompt("x", 0)


def test_load_by_folder_s3_and_clear_errors(tmp_path, monkeypatch):
    moto = pytest.importorskip("moto")
    import boto3

    folder = build_tiny_random(tmp_path / "model")
    (folder / "headrouter_profiles.json").write_text(json.dumps(Profiles.uniform(4, model_id="x").to_dict()))
    local = load_lalm(str(folder))
    assert local.num_layers == 4 and local.num_heads == 4 and local.window_s == 300.0
    assert local.profiles().model_id == "x"  # the folder's calibrated profiles are the default

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models")
        for f in folder.iterdir():
            s3.upload_file(str(f), "models", f"lalm/tiny/{f.name}")
        cache = tmp_path / "cache"
        a = load_lalm("s3://models/lalm/tiny", cache_dir=cache)
        copy = cache / "s3" / "models" / "lalm" / "tiny"
        assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in folder.iterdir())
        # a damaged copy is fetched again, never loaded (unlink first: `a` memory-maps the old file)
        (copy / "model.safetensors").unlink()
        (copy / "model.safetensors").write_bytes(b"corrupt")
        b = load_lalm("s3://models/lalm/tiny", cache_dir=cache)
        out_a = a.generate([GOOD], [PROMPT], max_new_tokens=2)[0]
        out_b = b.generate([GOOD], [PROMPT], max_new_tokens=2)[0]
        assert out_a.token_ids == out_b.token_ids
        with pytest.raises(FileNotFoundError, match="no config.json"):
            load_lalm("s3://models/elsewhere", cache_dir=cache)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="unknown model"):
        resolve_model("not a model")
    assert resolve_model("Qwen/Qwen2.5-Omni-3B") == "Qwen/Qwen2.5-Omni-3B"  # hub id only when named
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    config["model_type"], config["architectures"] = "whisper", ["WhisperForConditionalGeneration"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported model: model_type='whisper'.*'phi4_multimodal'"):
        load_lalm(str(bad))


def test_tiny_synth_alias_points_at_the_repo_folder(tmp_path, monkeypatch):
    repo = Path(__file__).resolve().parents[1]
    assert resolve_model("tiny-synth") == str(repo / "models" / "tiny-synth")  # committed, so always there
    monkeypatch.setattr("headrouter.engine.loading._REPO_ROOT", tmp_path)  # a checkout without the folder
    with pytest.raises(FileNotFoundError, match=r"tiny-synth model not found at .*models/tiny-synth"):
        resolve_model("tiny-synth")
