"""The synthetic task suite: six tasks in the paper's two families, generated deterministically from a seed.

| task | category | audio | question (one of 3 variants) | choices | answer |
|---|---|---|---|---|---|
| digits | semantic | espeak-ng speaks a 3-5 digit string ("3 1 4") | "transcribe the digits" | null | digit words: "three one four" |
| name | semantic | espeak-ng phrase with one name ("please call emma") | "which name was mentioned" | 4 of 8 names | the name: "emma" |
| event | acoustic | one sound event: tone, chirp, burst (band noise), clicks, siren | "which sound event occurred" | all 5, shuffled | the class |
| scene | acoustic | 2-5 s of white, pink, brown noise or mains hum | "which noise type is this" | all 4, shuffled | the class |
| voice | acoustic | digits or a name phrase by an espeak-ng male (+m1..m7) or female (+f1..f5) variant | "which voice does the speaker have" | male, female (shuffled) | "male" / "female" |
| pattern | acoustic | three beeps whose pitch rises, falls or stays | "which tone pattern is played" | rising, falling, steady (shuffled) | the class |

The model's prompt is `format_prompt(question, choices)`: the question, then the choices joined by " or "
("which name was mentioned anna or ben or emma or grace"). Answers are lowercase words separated by single
spaces. Short clips hold the content with 0.2-1 s of quiet noise around it (2-6 s in all); long clips put the same
content at a random offset inside 60-75 s of alternating quiet noise and digital silence. Sample i of a split is
drawn from `numpy.random.default_rng([seed, SPLIT_CODE[split], i])`, so a sample does not depend on `n` and the
splits never share a random stream even with equal seeds. Tasks cycle in the order of `TASKS` (balanced).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from headrouter.engine.prompt import task_prompt
from quality.synth import sounds as snd

__all__ = [
    "CATEGORY",
    "DIGIT_WORDS",
    "LONG_SECONDS",
    "QUESTIONS",
    "SPLIT_CODE",
    "TASKS",
    "Sample",
    "format_prompt",
    "make_sample",
    "vocabulary",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NAMES = ("anna", "ben", "clara", "david", "emma", "frank", "grace", "oscar")
NAME_PHRASES = ("hello {}", "please call {}", "this is {}", "{} is here", "ask {} now", "thank you {}")
EVENTS = ("tone", "chirp", "burst", "clicks", "siren")
SCENES = ("white", "pink", "brown", "hum")
VOICES = ("male", "female")
PATTERNS = ("rising", "falling", "steady")

TASKS = ("digits", "name", "event", "scene", "voice", "pattern")
CATEGORY = {"digits": "semantic", "name": "semantic", "event": "acoustic", "scene": "acoustic", "voice": "acoustic",
            "pattern": "acoustic"}  # fmt: skip
QUESTIONS = {
    "digits": ("transcribe the digits", "what digits are spoken", "write down the numbers you hear"),
    "name": ("which name was mentioned", "who is named in the recording", "which person is called"),
    "event": ("which sound event occurred", "what sound is this", "what kind of sound do you hear"),
    "scene": ("which noise type is this", "what background noise do you hear", "what kind of noise is it"),
    "voice": ("which voice does the speaker have", "what kind of voice speaks", "who is speaking"),
    "pattern": (
        "which tone pattern is played",
        "how does the pitch of the beeps move",
        "what melody do you hear",
    ),
}
SPLIT_CODE = {"train": 0, "calib": 1, "test": 2}
LONG_SECONDS = (60.0, 75.0)


@dataclass(frozen=True)
class Sample:
    """One generated clip and its labels (`audio`: [n] float32, 16 kHz)."""

    audio: np.ndarray
    task: str
    category: str
    question: str
    choices: tuple[str, ...] | None
    answer: str
    long: bool
    content_start_s: float
    content_end_s: float
    meta: dict


def format_prompt(question: str, choices: list[str] | tuple[str, ...] | None) -> str:
    """The text the model sees after the audio: the question, then the choices joined by " or "."""
    return task_prompt("qa", question, choices)


def vocabulary() -> list[str]:
    """Every word that can occur in a prompt or an answer, sorted (for the tiny word-level tokenizer)."""
    words = {"or", *DIGIT_WORDS, *NAMES, *EVENTS, *SCENES, *VOICES, *PATTERNS}
    for variants in QUESTIONS.values():
        for q in variants:
            words.update(q.split())
    return sorted(words)


def _speech_level(rng: np.random.Generator) -> float:
    return float(rng.uniform(-30, -18))


def _digits(rng: np.random.Generator) -> tuple[np.ndarray, str, tuple | None, dict]:
    digits = rng.integers(0, 10, size=int(rng.integers(3, 6)))
    voice, female = snd.random_voice(rng)
    speed, pitch = int(rng.integers(130, 191)), int(rng.integers(30, 71))
    audio = snd.speak(" ".join(str(d) for d in digits), voice, speed, pitch)
    answer = " ".join(DIGIT_WORDS[d] for d in digits)
    return (
        snd.at_rms(audio, _speech_level(rng)),
        answer,
        None,
        {"voice": voice, "speed": speed, "pitch": pitch},
    )


def _name_phrase(rng: np.random.Generator, name: str, female: bool | None) -> tuple[np.ndarray, dict]:
    voice, female = snd.random_voice(rng, female)
    speed, pitch = int(rng.integers(130, 191)), int(rng.integers(30, 71))
    text = NAME_PHRASES[rng.integers(len(NAME_PHRASES))].format(name)
    audio = snd.speak(text, voice, speed, pitch)
    return snd.at_rms(audio, _speech_level(rng)), {
        "voice": voice,
        "speed": speed,
        "pitch": pitch,
        "text": text,
    }


def _name(rng: np.random.Generator) -> tuple[np.ndarray, str, tuple | None, dict]:
    choices = tuple(str(c) for c in rng.choice(NAMES, size=4, replace=False))
    answer = choices[rng.integers(4)]
    audio, meta = _name_phrase(rng, answer, None)
    return audio, answer, choices, meta


def _event_audio(label: str, rng: np.random.Generator) -> np.ndarray:
    dur = float(rng.uniform(0.4, 1.2))
    if label == "tone":
        return snd.tone(float(rng.uniform(300, 2000)), dur)
    if label == "chirp":
        low, high = float(rng.uniform(200, 700)), float(rng.uniform(1500, 4000))
        return snd.chirp(low, high, dur) if rng.random() < 0.5 else snd.chirp(high, low, dur)
    if label == "burst":
        low = float(rng.uniform(100, 2000))
        return snd.band_noise(float(rng.uniform(0.2, 0.8)), low, low * float(rng.uniform(2, 6)), rng)
    if label == "clicks":
        return snd.click_train(float(rng.uniform(5, 20)), dur, rng)
    return snd.siren(
        float(rng.uniform(600, 1200)), float(rng.uniform(150, 400)), float(rng.uniform(1, 4)), 2 * dur
    )


def _shuffled(rng: np.random.Generator, labels: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(str(c) for c in rng.permutation(np.array(labels)))


def _event(rng: np.random.Generator) -> tuple[np.ndarray, str, tuple | None, dict]:
    answer = EVENTS[rng.integers(len(EVENTS))]
    audio = snd.at_rms(_event_audio(answer, rng), float(rng.uniform(-30, -15)))
    return audio, answer, _shuffled(rng, EVENTS), {}


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, str, tuple | None, dict]:
    answer = SCENES[rng.integers(len(SCENES))]
    audio = snd.at_rms(
        snd.colored_noise(answer, float(rng.uniform(2.0, 5.0)), rng), float(rng.uniform(-32, -18))
    )
    return audio, answer, _shuffled(rng, SCENES), {}


def _voice(rng: np.random.Generator) -> tuple[np.ndarray, str, tuple | None, dict]:
    answer = VOICES[rng.integers(2)]
    if rng.random() < 0.5:
        audio, meta = _name_phrase(rng, NAMES[rng.integers(len(NAMES))], answer == "female")
    else:
        digits = rng.integers(0, 10, size=int(rng.integers(2, 5)))
        voice, _ = snd.random_voice(rng, answer == "female")
        speed, pitch = int(rng.integers(130, 191)), int(rng.integers(30, 71))
        audio = snd.at_rms(snd.speak(" ".join(map(str, digits)), voice, speed, pitch), _speech_level(rng))
        meta = {"voice": voice, "speed": speed, "pitch": pitch}
    return audio, answer, _shuffled(rng, VOICES), meta


def _pattern(rng: np.random.Generator) -> tuple[np.ndarray, str, tuple | None, dict]:
    answer = PATTERNS[rng.integers(len(PATTERNS))]
    ratio = {
        "rising": float(rng.uniform(1.25, 1.6)),
        "falling": 1 / float(rng.uniform(1.25, 1.6)),
        "steady": 1.0,
    }
    freq, beep = float(rng.uniform(300, 900)), float(rng.uniform(0.15, 0.3))
    parts = []
    for k in range(3):
        parts += [snd.tone(freq * ratio[answer] ** k, beep), snd.silence(float(rng.uniform(0.1, 0.3)))]
    audio = snd.at_rms(snd.concat(parts[:-1]), float(rng.uniform(-30, -15)))
    return audio, answer, _shuffled(rng, PATTERNS), {}


_MAKERS: dict[str, Callable[[np.random.Generator], tuple[np.ndarray, str, tuple | None, dict]]] = {
    "digits": _digits, "name": _name, "event": _event, "scene": _scene, "voice": _voice, "pattern": _pattern,
}  # fmt: skip


def make_sample(split: str, seed: int, index: int, long_fraction: float = 0.0) -> Sample:
    """Generate sample `index` of `split` for `seed` (deterministic; independent of how many are generated)."""
    rng = np.random.default_rng([seed, SPLIT_CODE[split], index])
    task = TASKS[index % len(TASKS)]
    is_long = bool(rng.random() < long_fraction)
    question = QUESTIONS[task][rng.integers(3)]
    content, answer, choices, meta = _MAKERS[task](rng)
    if is_long:
        total = float(rng.uniform(*LONG_SECONDS))
        bg = snd.background(total, rng, sparse=True)
        offset = int(rng.integers(0, bg.size - content.size))
    else:
        lead, tail = float(rng.uniform(0.2, 1.0)), float(rng.uniform(0.2, 1.0))
        bg = snd.background(lead + tail + content.size / snd.SR, rng, sparse=False)
        offset = int(lead * snd.SR)
    audio = snd.place(bg, content, offset)
    return Sample(
        audio=audio,
        task=task,
        category=CATEGORY[task],
        question=question,
        choices=choices,
        answer=answer,
        long=is_long,
        content_start_s=offset / snd.SR,
        content_end_s=(offset + content.size) / snd.SR,
        meta=meta,
    )
