"""Family facts the equivalence suite does not pin: Phi-4's speech LoRA, Voxtral's 30-s chunks, prompt formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headrouter import AudioInputError, PruneOptions
from headrouter.adapters import phi4_multimodal, voxtral
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
