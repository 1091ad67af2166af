"""The one prompt template shared by the engine, training and calibration.

`[system block]<|im_start|>user\\n<|audio_bos|><|AUDIO|>*N<|audio_eos|>{prompt}<|im_end|>\\n<|im_start|>assistant\\n`
"""

from __future__ import annotations

__all__ = [
    "AUDIO",
    "AUDIO_BOS",
    "AUDIO_EOS",
    "ENDOFTEXT",
    "IM_END",
    "IM_START",
    "PAD",
    "ASR_PROMPT",
    "SPECIAL_TOKENS",
    "render_prompt",
    "task_prompt",
]

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO = "<|AUDIO|>"
AUDIO_EOS = "<|audio_eos|>"
ENDOFTEXT = "<|endoftext|>"
PAD = "<pad>"

ASR_PROMPT = "Transcribe the audio."  # a model folder may override it in headrouter.json ("asr_prompt")

# Order fixes the small ids the tiny tokenizers give these tokens (0..6).
SPECIAL_TOKENS = (PAD, ENDOFTEXT, IM_START, IM_END, AUDIO_BOS, AUDIO, AUDIO_EOS)


def render_prompt(prompt: str, num_audio_tokens: int, system: str | None = None) -> str:
    """Render one user turn holding `num_audio_tokens` audio placeholders followed by `prompt`.

    `system` adds a `<|im_start|>system\\n...<|im_end|>\\n` block first (real Qwen checkpoints ship one;
    the tiny models do not). The text ends with the assistant header, ready for generation.
    """
    if num_audio_tokens < 1:
        raise ValueError(f"num_audio_tokens must be >= 1, got {num_audio_tokens}")
    head = f"{IM_START}system\n{system}{IM_END}\n" if system else ""
    audio = f"{AUDIO_BOS}{AUDIO * num_audio_tokens}{AUDIO_EOS}"
    return f"{head}{IM_START}user\n{audio}{prompt}{IM_END}\n{IM_START}assistant\n"


def task_prompt(task: str, question: str | None, choices=None, asr_prompt: str = ASR_PROMPT) -> str:
    """The text after the audio for a pipeline task: `asr_prompt` for "asr"; for "qa" the question, then the
    choices joined by " or " ("which name was mentioned anna or ben or emma"), the format tiny-synth learned."""
    if task == "asr":
        return asr_prompt
    text = (question or "").strip()
    return f"{text} {' or '.join(choices)}" if choices else text
