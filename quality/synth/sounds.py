"""Deterministic sound primitives for the synthetic benchmark: espeak-ng speech, tones, noises, mixing.

Every function returns float32 mono audio at 16 kHz. Randomness comes only from the `numpy.random.Generator`
passed in, and the external tools run with fixed arguments (espeak-ng is deterministic for fixed text, voice,
speed and pitch once libpulse is kept out of the way, see `speak`; sox runs with `-R` and without dither), so one
seed always gives the same samples.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np

SR = 16000

# espeak-ng voice variants; the class of the variant is the `voice` task's label.
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
ACCENTS = ("en-us", "en", "en-029", "en-gb-scotland")


def _espeak_env() -> dict[str, str]:
    # espeak-ng links libpulse, which starts a client even with --stdout. In a HOME without
    # ~/.config/pulse/<machine-id>-runtime (a fresh machine or container, or a stale link) and without
    # XDG_RUNTIME_DIR, the client creates /tmp/pulse-XXXXXXXXXXXX, reseeding libc's rand() from /dev/urandom
    # to name it; the breath noise of the +f voices comes from that rand(), so the first clip spoken on a fresh
    # machine differed from every later run. A server address that does not exist makes the client give up
    # before it creates anything: rand() keeps its fixed default seed.
    return {**os.environ, "PULSE_SERVER": "unix:/nonexistent/headrouter-synth"}


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """Speak `text` with espeak-ng (`voice` like "en-us+f3", `speed` words/min, `pitch` 0-99) -> [n] float32."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
        env=_espeak_env(),
    ).stdout
    raw = subprocess.run(
        [
            "sox",
            "-R",
            "-D",
            "-t",
            "wav",
            "-",
            "-r",
            str(SR),
            "-c",
            "1",
            "-e",
            "float",
            "-b",
            "32",
            "-t",
            "raw",
            "-",
        ],
        input=wav,
        check=True,
        capture_output=True,
    ).stdout
    audio = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    return trim_silence(audio)


def random_voice(rng: np.random.Generator, female: bool | None = None) -> tuple[str, bool]:
    """Pick an espeak-ng voice -> (voice string, is_female)."""
    if female is None:
        female = bool(rng.random() < 0.5)
    variants = FEMALE_VARIANTS if female else MALE_VARIANTS
    accent = ACCENTS[rng.integers(len(ACCENTS))]
    return f"{accent}+{variants[rng.integers(len(variants))]}", female


def trim_silence(audio: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    """Drop leading and trailing samples below `threshold` (espeak pads its output)."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio


def fade(audio: np.ndarray, ms: float = 10.0) -> np.ndarray:
    """Raised-cosine fade in and out, so onsets do not click."""
    n = min(int(SR * ms / 1000), audio.size // 2)
    if n == 0:
        return audio
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n, dtype=np.float32))
    out = audio.copy()
    out[:n] *= ramp
    out[-n:] *= ramp[::-1]
    return out


def _t(duration_s: float) -> np.ndarray:
    return np.arange(int(round(duration_s * SR)), dtype=np.float64) / SR


def tone(freq: float, duration_s: float) -> np.ndarray:
    """A pure sine."""
    return fade(np.sin(2 * np.pi * freq * _t(duration_s)).astype(np.float32))


def chirp(f0: float, f1: float, duration_s: float) -> np.ndarray:
    """An exponential sweep from f0 to f1."""
    t = _t(duration_s)
    k = np.log(f1 / f0) / duration_s
    phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k
    return fade(np.sin(phase).astype(np.float32))


def siren(carrier: float, deviation: float, rate: float, duration_s: float) -> np.ndarray:
    """A sine whose frequency swings +-deviation around carrier, rate times a second."""
    t = _t(duration_s)
    phase = 2 * np.pi * carrier * t - deviation / rate * np.cos(2 * np.pi * rate * t)
    return fade(np.sin(phase).astype(np.float32))


def click_train(rate: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Short decaying clicks, `rate` per second."""
    out = np.zeros(int(round(duration_s * SR)), dtype=np.float32)
    click = (rng.standard_normal(48) * np.exp(-np.arange(48) / 8.0)).astype(np.float32)
    for start in range(0, out.size - click.size, int(SR / rate)):
        out[start : start + click.size] += click
    return out


def colored_noise(color: str, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f power), brown (1/f^2 power) noise, or mains hum (50/60 Hz with harmonics)."""
    n = int(round(duration_s * SR))
    if color == "hum":
        t = _t(duration_s)
        base = 50.0 if rng.random() < 0.5 else 60.0
        amps = rng.uniform(0.2, 1.0, size=8)
        out = sum(
            a * np.sin(2 * np.pi * base * (h + 1) * t + rng.uniform(0, 2 * np.pi)) for h, a in enumerate(amps)
        )
        out = out + 0.02 * rng.standard_normal(n)
        return fade(out.astype(np.float32))
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SR)
    freqs[0] = freqs[1]
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[color]  # amplitude ~ f^-exponent
    out = np.fft.irfft(spec / freqs**exponent, n)
    return fade(out.astype(np.float32))


def band_noise(duration_s: float, low: float, high: float, rng: np.random.Generator) -> np.ndarray:
    """Noise band-limited to [low, high] Hz."""
    n = int(round(duration_s * SR))
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SR)
    spec[(freqs < low) | (freqs > high)] = 0
    return fade(np.fft.irfft(spec, n).astype(np.float32))


def at_rms(audio: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale to an RMS level in dB relative to full scale."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    if rms == 0.0:
        return audio
    return (audio * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def silence(duration_s: float) -> np.ndarray:
    return np.zeros(int(round(duration_s * SR)), dtype=np.float32)


def concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.float32) if parts else silence(0)


def background(duration_s: float, rng: np.random.Generator, sparse: bool) -> np.ndarray:
    """Low-level background: quiet white noise, or (sparse) alternating stretches of quiet noise and silence."""
    n = int(round(duration_s * SR))
    level = float(rng.uniform(-60, -45))
    noise = at_rms(rng.standard_normal(n).astype(np.float32), level)
    if not sparse:
        return noise
    out = np.zeros(n, dtype=np.float32)
    pos, on = 0, bool(rng.random() < 0.5)
    while pos < n:
        length = int(rng.uniform(2.0, 10.0) * SR)
        if on:
            out[pos : pos + length] = noise[pos : pos + length]
        pos, on = pos + length, not on
    return out


def place(bg: np.ndarray, fg: np.ndarray, offset: int) -> np.ndarray:
    """Add `fg` into a copy of `bg` starting at sample `offset`."""
    out = bg.copy()
    out[offset : offset + fg.size] += fg[: max(0, out.size - offset)]
    return out


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Clip to [-1, 1) and quantise to int16 the way the wav file stores it."""
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
