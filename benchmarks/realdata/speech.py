"""Spoken-word classification sets, 8 kHz mono 16-bit WAV clips of at most 1 s (field ``speech.wav``):

- ``speech-digits``: espeak-ng (Debian ``espeak-ng``) saying "zero".."nine". A voice is an espeak-ng
  variant (``!v``: m1, f3, klatt, Storm, ... about 100 of them), each clip spoken with a seeded English
  accent (en-us, en-gb, scotland, rp, ...), speed and pitch. Split by **variant**: a fifth of the
  variants (chosen by a stable hash of the name) are held out, so every held-out clip comes from a
  voice never heard in training.
- ``speech-commands``: the ten command words yes/no/up/down/left/right/on/off/stop/go, from two engines:
  espeak-ng variants (same variant split as above) and flite (Debian ``flite``) voices with seeded
  duration stretch and pitch. flite's ``awb`` voice is held out whole; kal, kal16, rms and slt train.
- ``speech-letters``: espeak-ng saying the 26 letter names a..z (b, c, d, e, g, p, t, v, z differ only in
  their first consonant), split by variant as ``speech-digits``. Added after the defaults were planned
  from the data, to check them on a set they were not chosen on.

Each clip is trimmed of leading and trailing silence, resampled with soxr, cut to 1 s and its peak set
to a seeded level.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import tempfile
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from benchmarks.realdata.shards import (
    BuiltSet,
    MissingPrerequisiteError,
    classification_sample,
    require_command,
    stable_hash,
)

RATE = 8000
MAX_SECONDS = 1.0
FIELD = "speech.wav"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMAND_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
LETTER_WORDS = tuple("abcdefghijklmnopqrstuvwxyz")
"""espeak-ng says a lone letter by its name: "bee", "cee", ... (the confusable English e-set included)."""
ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
FLITE_TRAIN = ("kal", "kal16", "rms", "slt")
FLITE_HELD_OUT = ("awb",)
ESPEAK_DATA = (
    Path("/usr/lib/x86_64-linux-gnu/espeak-ng-data"),
    Path("/usr/lib/aarch64-linux-gnu/espeak-ng-data"),
    Path("/usr/share/espeak-ng-data"),
)


@dataclass(frozen=True)
class Utterance:
    key: str
    word: str
    voice: str
    command: tuple[str, ...]  # a command line that writes a WAV file to {out}


def espeak_variants() -> list[str]:
    for root in ESPEAK_DATA:
        folder = root / "voices" / "!v"
        if folder.is_dir():
            return sorted(p.name for p in folder.iterdir() if p.is_file())
    raise MissingPrerequisiteError("espeak-ng voice variants not found: apt-get install espeak-ng")


def variant_held_out(variant: str) -> bool:
    return stable_hash(variant, "espeak-variant") % 5 == 0


def espeak_utterances(words: tuple[str, ...], repeats: int, tag: str) -> list[Utterance]:
    exe = require_command("espeak-ng", "espeak-ng")
    out: list[Utterance] = []
    for variant in espeak_variants():
        for word in words:
            for rep in range(repeats):
                rng = random.Random(f"{tag}:{variant}:{word}:{rep}")
                accent = rng.choice(ACCENTS)
                speed, pitch = rng.randint(130, 210), rng.randint(15, 85)
                cmd = (
                    exe,
                    "-v",
                    f"{accent}+{variant}",
                    "-s",
                    str(speed),
                    "-p",
                    str(pitch),
                    "-w",
                    "{out}",
                    word,
                )
                out.append(Utterance(f"espeak-{variant}-{word}-{rep}", word, variant, cmd))
    return out


def flite_utterances(words: tuple[str, ...], voices: tuple[str, ...], repeats: int) -> list[Utterance]:
    exe = require_command("flite", "flite")
    out: list[Utterance] = []
    for voice in voices:
        for word in words:
            for rep in range(repeats):
                rng = random.Random(f"flite:{voice}:{word}:{rep}")
                stretch, f0 = rng.uniform(0.75, 1.35), rng.randint(80, 220)
                cmd = (
                    exe,
                    "-voice",
                    voice,
                    "--setf",
                    f"duration_stretch={stretch:.3f}",
                    "--setf",
                    f"int_f0_target_mean={f0}",
                    "-t",
                    word,
                    "-o",
                    "{out}",
                )
                out.append(Utterance(f"flite-{voice}-{word}-{rep}", word, voice, cmd))
    return out


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"expected 16-bit WAV, got {8 * w.getsampwidth()}-bit")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        if w.getnchannels() > 1:
            pcm = pcm.reshape(-1, w.getnchannels()).mean(axis=1)
        return pcm, w.getframerate()


def wav_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.rint(samples * 32767.0).clip(-32768, 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def clean(samples: np.ndarray, rate: int, level: float) -> tuple[np.ndarray, bool]:
    """Trimmed of silence (3% of the peak, 20 ms kept each side), at RATE, at most MAX_SECONDS (and
    whether it had to be cut), peak at ``level``."""
    peak = float(np.abs(samples).max()) or 1.0
    loud = np.flatnonzero(np.abs(samples) > 0.03 * peak)
    margin = int(0.02 * rate)
    if len(loud):
        samples = samples[max(0, loud[0] - margin) : loud[-1] + margin]
    if rate != RATE:
        samples = soxr.resample(samples, rate, RATE).astype(np.float32)
    limit = int(MAX_SECONDS * RATE)
    cut = len(samples) > limit
    samples = samples[:limit]
    return samples * (level / (float(np.abs(samples).max()) or 1.0)), cut


def synthesize(utterances: list[Utterance], workers: int = 2) -> tuple[list[np.ndarray], int]:
    """Run the engines (subprocesses, so threads do run in parallel), clean each clip; also how many
    clips were longer than MAX_SECONDS and cut."""
    with tempfile.TemporaryDirectory(prefix="realdata-tts-") as tmp:

        def one(index_utt: tuple[int, Utterance]) -> tuple[np.ndarray, bool]:
            index, utt = index_utt
            path = os.path.join(tmp, f"{index}.wav")
            cmd = [part.replace("{out}", path) for part in utt.command]
            subprocess.run(
                cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            samples, rate = read_wav(Path(path).read_bytes())
            os.unlink(path)
            level = random.Random(f"level:{utt.key}").uniform(0.3, 0.95)
            return clean(samples, rate, level)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, enumerate(utterances)))
    return [clip for clip, _ in results], sum(cut for _, cut in results)


def assemble(
    name: str,
    source: str,
    split_rule: str,
    utterances: list[Utterance],
    held_out: Callable[[Utterance], bool],
    question: str,
    features: Callable[[list[np.ndarray]], np.ndarray],
) -> BuiltSet:
    clips, cut = synthesize(utterances)
    parts: dict[bool, list[int]] = {False: [], True: []}
    for index, utt in enumerate(utterances):
        parts[held_out(utt)].append(index)
    samples = {
        side: [
            classification_sample(utterances[i].key, FIELD, wav_bytes(clips[i]), question, utterances[i].word)
            for i in idx
        ]
        for side, idx in parts.items()
    }
    return BuiltSet(
        name=name,
        task="speech",
        source=source,
        split_rule=split_rule,
        train=samples[False],
        held_out=samples[True],
        features_train=features([clips[i] for i in parts[False]]),
        features_held_out=features([clips[i] for i in parts[True]]),
        labels_train=[utterances[i].word for i in parts[False]],
        labels_held_out=[utterances[i].word for i in parts[True]],
        extra={
            "train_voices": sorted({utterances[i].voice for i in parts[False]}),
            "held_out_voices": sorted({utterances[i].voice for i in parts[True]}),
            "mean_seconds": round(float(np.mean([len(c) for c in clips])) / RATE, 3),
            "clips_cut_to_1s": cut,
        },
    )


def build_digits(features: Callable[[list[np.ndarray]], np.ndarray]) -> BuiltSet:
    source = "espeak-ng saying zero..nine; ~100 voice variants x 8 English accents, seeded speed and pitch"
    return espeak_set("speech-digits", DIGIT_WORDS, 2, source, "which digit was spoken?", features)


def espeak_set(
    name: str,
    words: tuple[str, ...],
    repeats: int,
    source: str,
    question: str,
    features: Callable[[list[np.ndarray]], np.ndarray],
) -> BuiltSet:
    """espeak-ng voice variants saying ``words``, a stable-hash fifth of the variants held out."""
    return assemble(
        name,
        source,
        "by espeak-ng voice variant: a stable-hash fifth of the variants held out",
        espeak_utterances(words, repeats=repeats, tag=name.removeprefix("speech-")),
        lambda u: variant_held_out(u.voice),
        question,
        features,
    )


def build_commands(features: Callable[[list[np.ndarray]], np.ndarray]) -> BuiltSet:
    utterances = espeak_utterances(COMMAND_WORDS, repeats=1, tag="commands")
    utterances += flite_utterances(COMMAND_WORDS, FLITE_TRAIN, repeats=20)
    utterances += flite_utterances(COMMAND_WORDS, FLITE_HELD_OUT, repeats=15)
    return assemble(
        "speech-commands",
        "yes/no/up/down/left/right/on/off/stop/go from espeak-ng variants and flite voices",
        "by voice: espeak-ng variants as in speech-digits; flite awb held out, kal/kal16/rms/slt train",
        utterances,
        lambda u: u.voice in FLITE_HELD_OUT or (u.key.startswith("espeak-") and variant_held_out(u.voice)),
        "which word was spoken?",
        features,
    )


def build_letters(features: Callable[[list[np.ndarray]], np.ndarray]) -> BuiltSet:
    source = "espeak-ng saying the letter names a..z; ~100 voice variants x 8 accents, seeded speed and pitch"
    return espeak_set("speech-letters", LETTER_WORDS, 1, source, "which letter was spoken?", features)
