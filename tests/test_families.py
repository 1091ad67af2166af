"""Family facts the equivalence suite does not pin: Phi-4's speech LoRA, Voxtral's 30-s chunks, prompt formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headrouter import AudioInputError, PruneOptions
from headrouter.engine.adapters import phi4_multimodal, voxtral
from tests.test_engine import PROMPT, clip, tiny


def test_phi4mm_loads_with_its_speech_lora_merged():
    from transformers import Phi4MultimodalForCausalLM

    lalm = tiny("tiny-random-phi4mm")
    plain = Phi4MultimodalForCausalLM.from_pretrained(lalm.folder).eval()  # base weights only
    from safetensors.torch import load_file

    lora = load_file(str(lalm.folder / "speech-lora" / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.self_attn.qkv_proj"
    a, b = lora[f"{key}.lora_A.weight"], lora[f"{key}.lora_B.weight"]  # [r, D], [out, r]
    x = torch.randn(5, a.shape[1])
    base = plain.model.layers[1].self_attn.qkv_proj
    # what PEFT's LoRA Linear computes with the speech adapter active: W x + (alpha / r) * B A x (alpha 8, r 4)
    expected = base(x) + 2.0 * (x @ a.T @ b.T)
    torch.testing.assert_close(lalm.model.model.layers[1].self_attn.qkv_proj(x), expected, atol=1e-5, rtol=0)
    assert (expected - base(x)).abs().max() > 1e-2


def test_phi4mm_window_tokens_and_prompt():
    lalm = tiny("tiny-random-phi4mm")
    assert lalm.window_s == 1800.0 and lalm.token_ids.bos is None and lalm.token_ids.eos is None
    inputs = lalm.prepare(clip(2.0), PROMPT)
    # 2 s: (32000 - 400) // 160 + 1 = 198 fbank frames -> ceil(198 / 8) = 25 tokens (12.5 per second)
    assert int((inputs["input_ids"] == lalm.token_ids.audio).sum()) == 25
    assert inputs["audio_input_features"].shape == (1, 198, 80) and inputs["audio_embed_sizes"].tolist() == [
        25
    ]
    text = lalm.tokenizer.decode(inputs["input_ids"][0])
    assert text.startswith("<|user|> <|endoftext11|>") and text.endswith("<|end|> <|assistant|>")
    assert (
        phi4_multimodal.render_prompt("hi", 2, "sys", "<A>")
        == "<|system|>sys<|end|><|user|><A><A>hi<|end|><|assistant|>"
    )


def test_voxtral_pads_to_whole_30_second_chunks():
    lalm = tiny("tiny-random-voxtral")
    assert lalm.window_s == 1800.0
    long = np.full(31 * 16000, 0.01, np.float32)
    inputs = lalm.prepare(long, PROMPT)
    assert inputs["input_features"].shape == (2, 128, 3000)  # two chunks stacked on the batch axis
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(lalm.token_ids.audio) == 750 == voxtral.audio_token_count(3100)
    tok = lalm.tokenizer.convert_tokens_to_ids
    assert ids[:3] == [tok("<s>"), tok("[INST]"), tok("[BEGIN_AUDIO]")] and ids[-1] == tok("[/INST]")
    # the stock processor's features: the clip zero-padded to 60 s, log-mel, cut into 3000-frame rows
    full = lalm.feature_extractor(
        [long],
        sampling_rate=16000,
        padding=True,
        truncation=False,
        pad_to_multiple_of=480000,
        return_tensors="pt",
    )["input_features"][0]  # [128, 6000] (VoxtralProcessor's audio kwargs)
    torch.testing.assert_close(inputs["input_features"], full.reshape(128, 2, 3000).transpose(0, 1))
    out = lalm.generate([long], [PROMPT], PruneOptions(method="vanilla"), max_new_tokens=1)[0]
    assert out.audio_tokens == 750
    with pytest.raises(AudioInputError, match="longer than the model window of 1800 s"):
        lalm.prepare(np.zeros(1800 * 16000 + 1, np.float32), PROMPT)


def test_qwen3_omni_tokens_prompt_window_and_batch_groups():
    from headrouter.engine.adapters import qwen3_omni

    lalm = tiny("tiny-random-qwen3-omni")
    assert lalm.window_s == 1800.0
    # 13 tokens per 100-frame chunk, the tail by three halvings: the stock processor's formula
    from transformers.models.qwen3_omni_moe.processing_qwen3_omni_moe import _get_feat_extract_output_lengths

    for frames in (4, 75, 99, 100, 101, 130, 199, 200, 1234, 180000):
        stock = int(_get_feat_extract_output_lengths(torch.tensor(frames), 50))
        assert qwen3_omni.audio_token_count(frames) == stock, frames
    inputs = lalm.prepare(clip(2.0), PROMPT)
    assert int((inputs["input_ids"] == lalm.token_ids.audio).sum()) == 26
    text = lalm.tokenizer.decode(inputs["input_ids"][0])
    assert text.startswith("<|im_start|> user <|audio_start|> <|audio_pad|>")
    assert text.endswith("<|audio_end|> transcribe the audio . <|im_end|> <|im_start|> assistant")
    # clips of 1 s or more share a padded batch; shorter ones only with clips of their own length
    groups = lalm.batch_groups([len(clip(s)) for s in (1.0, 0.5, 7.0, 0.5, 0.3)])
    assert groups == [[0, 2], [1, 3], [4]]
    with pytest.raises(AudioInputError, match="longer than the model window of 1800 s"):
        lalm.prepare(np.zeros(1800 * 16000 + 1, np.float32), PROMPT)
    with pytest.raises(ValueError, match="skip_silence='energy'.*not qwen3_omni"):
        lalm.generate([clip(1.0)], [PROMPT], PruneOptions(skip_silence="energy"), max_new_tokens=1)


def test_qwen3_omni_encoder_pads_sub_second_clips_and_moe_routes_per_token():
    lalm = tiny("tiny-random-qwen3-omni")
    thinker = lalm.model.model

    def encoded(audios):
        batch = lalm.prepare_batch(audios, [PROMPT] * len(audios))
        with torch.inference_mode():
            return thinker.get_audio_features(batch["input_features"], batch["feature_attention_mask"])[0]

    short, long = encoded([clip(0.5)]), encoded([clip(1.37)])  # [7, D], [18, D]
    mixed = encoded([clip(2.3, 1), clip(0.5), clip(1.37)])
    assert (mixed[-25:-18] - short).abs().max() > 1e-6  # why batch_group keeps sub-second clips apart
    assert torch.equal(mixed[-18:], long)
    # the sparse MoE block: each token's output is a function of that token alone (no capacity, no batch term)
    moe = lalm.layers[1].mlp
    x = torch.randn(1, 40, moe.gate.hidden_dim)
    with torch.inference_mode():
        full = moe(x)
        part = moe(x[:, 7:19])
    torch.testing.assert_close(full[:, 7:19], part, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("alias", "token"),
    [
        ("tiny-random", "<|im_end|>"),
        ("tiny-random-qwen2-audio", "<|im_end|>"),
        ("tiny-random-phi4mm", "<|end|>"),
        ("tiny-random-voxtral", "</s>"),
        ("tiny-random-qwen3-omni", "<|im_end|>"),
    ],
)
def test_calibration_ends_an_answer_with_the_familys_own_end_of_turn(alias, token):
    from headrouter.calibration import answer_token_ids

    lalm = tiny(alias)
    ids = answer_token_ids(lalm, "three one")
    assert lalm.tokenizer.convert_ids_to_tokens(ids[-1]) == token
    # the token the model stops on, and (where the family has one) the one its chat format closes a turn with
    assert ids[-1] in lalm.eos_token_ids
    if token != "</s>":
        prompt = lalm.prepare(clip(1.0), PROMPT)["input_ids"][0].tolist()
        assert ids[-1] in prompt
