"""``wav``: audio through soundfile. The payload is interleaved little-endian PCM; the header carries
rate, channels and sample format (8-, 16-, 24- and 32-bit integer, 32- and 64-bit float: every sample
kept as the file has it), so decoding writes a playable WAV file. ``payload: file`` keeps the file's
bytes instead (byte-exact for any WAV, headers and extra chunks included). ``payload: logmel`` gives the
model a log-mel spectrogram instead, one byte a band, frame after frame (``logmel.py`` says why): the
view to classify speech from; lossy, so its file form is a PNG of the spectrogram, not audio. The
default, ``auto``, is ``logmel`` where the field is only read (a vqa/classify context) and PCM else.
"""

from __future__ import annotations

import io
import wave
from typing import Literal

import numpy as np
import soundfile as sf
from mbp.api import CodecError, CodecTraits, Segment
from pydantic import BaseModel, ConfigDict, Field

from mbp_audio.logmel import log_mel_power, mask_bands_and_frames, quantize_db, vary_speed

# sample format -> (soundfile subtype, numpy dtype of the stored PCM; s24 is stored as 3 bytes a sample)
FORMATS = {
    "u8": ("PCM_U8", np.uint8),
    "s16": ("PCM_16", np.int16),
    "s24": ("PCM_24", np.int32),
    "s32": ("PCM_32", np.int32),
    "f32": ("FLOAT", np.float32),
    "f64": ("DOUBLE", np.float64),
}
DECODED = ("FLAC", "OGG")
"""Formats read as WAV is where the payload is samples (``pcm``, ``logmel``), not the file."""
SUBTYPE_TO_FORMAT = {subtype: fmt for fmt, (subtype, _) in FORMATS.items()}
# what soundfile reads each format as without losing a bit (24-bit arrives in the top of an int32)
READ_AS = {"u8": "int16", "s16": "int16", "s24": "int32", "s32": "int32", "f32": "float32", "f64": "float64"}


class WavParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payload: Literal["auto", "pcm", "file", "logmel"] = Field(
        default="auto",
        description="auto: logmel where the field is only read (a classifier's input), else pcm",
    )
    sample_rate: int | None = Field(default=None, gt=0, description="resample to this rate")
    mono: bool = False
    bits: Literal[8, 16] | None = Field(default=None, description="re-quantize to 8- or 16-bit PCM")
    max_seconds: float = Field(default=600.0, gt=0)
    # 16 bands every 20 ms: 800 bytes a second. Logistic regression on spoken digits scores the same on it
    # as on 32 bands every 10 ms (0.980 vs 0.978), which is 4x the bytes for a byte model to read.
    mel_bands: int = Field(default=16, ge=1, le=256, description="logmel: bands a frame (bytes a frame)")
    frame_ms: float = Field(default=25.0, gt=0, description="logmel: analysis window")
    hop_ms: float = Field(default=20.0, gt=0, description="logmel: time between frames")
    floor_db: float = Field(default=80.0, gt=0, description="logmel: byte 0 is this far below the peak")
    # off by default, measured: on spoken digits it held accuracy after 200 steps to 0.36 against 0.75
    # without; within a run of minutes the model needs the plain clips more than their variations
    augment: bool = Field(
        default=False,
        description="logmel: vary training clips (speed 0.9-1.1x, two band and two time masks)",
    )


LOGMEL_CONTEXT_WEIGHT = 0.1
"""Measured on three spoken-word sets (held-out voices) at the suite's defaults, two seeds each: spoken
letters 0.918 / 0.903 held-out accuracy at 0.1 against 0.893 / 0.880 at the answer heads' 0.01,
commands and digits level (within 0.005); at weight 0 spoken digits reached 0.41 after 200 steps
against 0.75 at 0.1."""


class WavCodec:
    name = "wav"
    extension = "wav"

    def __init__(self, params: WavParams) -> None:
        self.params = params
        self.payload = "pcm" if params.payload == "auto" else params.payload
        self.sample_rate = params.sample_rate
        self.mono = params.mono
        self.bits = params.bits
        self.max_seconds = params.max_seconds
        self.augment = params.augment
        self.traits = CodecTraits(
            # log-mel frames read as an answer's context weigh more than the answer heads' default
            context_weight=LOGMEL_CONTEXT_WEIGHT if self.payload == "logmel" else None,
            augment="always" if params.augment else "never",
            rows=True,  # boundaries unset: one log-mel frame (its row); raw PCM and file bytes fixed
            reading_view=True,
            segment_extension=True,
        )

    def encode(self, data: bytes) -> Segment:
        return self._encode(data, None)

    def for_reading(self) -> WavCodec:
        """``payload: auto`` reads a context field as a log-mel spectrogram (see ``logmel.py``)."""
        if self.params.payload != "auto":
            return self
        return WavCodec(self.params.model_copy(update={"payload": "logmel"}))

    def encode_augmented(self, data: bytes, rng: np.random.Generator) -> Segment:
        """Training samples of a ``logmel`` payload vary (``augment``); PCM and files stay exact."""
        return self._encode(data, rng if self.augment and self.payload == "logmel" else None)

    def _encode(self, data: bytes, rng: np.random.Generator | None) -> Segment:
        fast = self._plain_pcm(data)
        if fast is not None:
            return fast
        try:
            audio = sf.SoundFile(io.BytesIO(data))
        except Exception as error:
            raise CodecError(f"not readable audio: {_reason(error)}") from None
        with audio:
            # FLAC and Ogg decode to the same samples; only a WAV file is kept as a WAV file's bytes
            if audio.format != "WAV" and (audio.format not in DECODED or self.payload == "file"):
                raise CodecError(f"expected a WAV file, got {audio.format}")
            if audio.frames > self.max_seconds * audio.samplerate:
                seconds = audio.frames / audio.samplerate
                raise CodecError(f"audio is {seconds:.1f} s, over the limit of {self.max_seconds} s")
            if self.payload == "file":
                return Segment(self.name, bytes(data), {"payload": "file"})
            rate, subtype = audio.samplerate, audio.subtype
            keep = subtype in SUBTYPE_TO_FORMAT and not (
                self.sample_rate or self.mono or self.bits or self.payload == "logmel"
            )
            dtype = READ_AS[SUBTYPE_TO_FORMAT[subtype]] if keep else "float32"
            try:
                samples = audio.read(dtype=dtype, always_2d=True)
            except Exception as error:
                raise CodecError(f"audio data unreadable: {_reason(error)}") from None
        if keep:  # the file's own sample format, bit for bit
            fmt = SUBTYPE_TO_FORMAT[subtype]
            return self._segment(_from_read(samples, fmt), rate, fmt)
        if (self.mono or self.payload == "logmel") and samples.shape[1] > 1:
            samples = samples.mean(axis=1, keepdims=True)
        if self.sample_rate and self.sample_rate != rate:
            import soxr

            samples = np.asarray(soxr.resample(samples, rate, self.sample_rate), dtype=np.float32)
            samples = samples.reshape(-1, 1) if samples.ndim == 1 else samples
            rate = self.sample_rate
        if self.payload == "logmel":
            return self._spectrogram(samples[:, 0], rate, rng)
        fmt = {8: "u8", 16: "s16"}.get(self.bits or 0) or SUBTYPE_TO_FORMAT.get(subtype, "s16")
        return self._segment(_quantize(samples, fmt), rate, fmt)

    def _plain_pcm(self, data: bytes) -> Segment | None:
        """8- or 16-bit PCM kept as it is: the stdlib parser is ~10x cheaper than libsndfile here.
        Anything else (or anything odd) goes the soundfile way, which also produces the errors."""
        if self.payload != "pcm" or self.sample_rate or self.mono or self.bits:
            return None
        try:
            with wave.open(io.BytesIO(data)) as reader:
                width, channels, rate, frames = (
                    reader.getsampwidth(),
                    reader.getnchannels(),
                    reader.getframerate(),
                    reader.getnframes(),
                )
                if width not in (1, 2) or frames > self.max_seconds * rate or rate <= 0:
                    return None
                pcm = reader.readframes(frames)
        except Exception:  # anything odd goes the soundfile way, which reports it properly
            return None
        if len(pcm) != frames * width * channels:
            return None
        fmt = "u8" if width == 1 else "s16"
        return Segment(self.name, pcm, {"rate": str(rate), "ch": str(channels), "fmt": fmt})

    def _spectrogram(self, mono: np.ndarray, rate: int, rng: np.random.Generator | None) -> Segment:
        mel = self.params
        if rng is not None:
            mono = vary_speed(mono, rate, rng)
        cells = quantize_db(log_mel_power(mono, rate, mel.mel_bands, mel.frame_ms, mel.hop_ms), mel.floor_db)
        if rng is not None:
            cells = mask_bands_and_frames(cells, rng)
        meta = {"payload": "logmel", "rate": str(rate), "bands": str(mel.mel_bands)}
        return Segment(self.name, cells.tobytes(), meta)

    def _segment(self, pcm: np.ndarray, rate: int, fmt: str) -> Segment:
        meta = {"rate": str(rate), "ch": str(pcm.shape[1]), "fmt": fmt}
        array = np.ascontiguousarray(pcm, dtype=FORMATS[fmt][1])
        if fmt == "s24":  # the low three bytes of each little-endian int32
            return Segment(
                self.name, array.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes(), meta
            )
        return Segment(self.name, array.tobytes(), meta)

    def decode(self, segment: Segment) -> bytes | np.ndarray:
        """A playable WAV file; for ``logmel``, the spectrogram as (bands, frames) bytes, low bands last
        as a spectrogram is drawn."""
        if segment.meta.get("payload") == "logmel":
            return self.spectrogram(segment)
        return self.to_file(segment)

    def extension_of(self, segment: Segment) -> str:
        return "png" if segment.meta.get("payload") == "logmel" else self.extension

    def row_bytes(self, segment: Segment) -> int | None:
        """A spectrogram's frame (its bands); raw samples have no rows worth a patch."""
        if segment.meta.get("payload") != "logmel":
            return None
        bands = segment.meta.get("bands", "")
        return int(bands) if bands.isdigit() and int(bands) > 0 else None

    def spectrogram(self, segment: Segment) -> np.ndarray:
        try:
            bands = int(segment.meta["bands"])
        except (KeyError, ValueError):
            raise CodecError(f"logmel header needs bands: {segment.meta}") from None
        if bands <= 0 or len(segment.payload) % bands or not segment.payload:
            raise CodecError(
                f"logmel payload of {len(segment.payload)} bytes is not one or more whole frames of "
                f"{bands} bands"
            )
        frames = np.frombuffer(segment.payload, dtype=np.uint8).reshape(-1, bands)
        return np.ascontiguousarray(frames.T[::-1])

    def samples(self, segment: Segment) -> tuple[np.ndarray, int]:
        """The PCM samples as an array (frames, channels) and the sample rate."""
        if segment.meta.get("payload") == "logmel":
            raise CodecError("a logmel segment holds a spectrogram, not samples")
        if segment.meta.get("payload") == "file":
            data, rate = sf.read(io.BytesIO(self.to_file(segment)), dtype="int16", always_2d=True)
            return data, rate
        try:
            rate, channels, fmt = int(segment.meta["rate"]), int(segment.meta["ch"]), segment.meta["fmt"]
            dtype = FORMATS[fmt][1]
        except (KeyError, ValueError):
            raise CodecError(
                f"wav header needs rate, ch and fmt in {sorted(FORMATS)}: {segment.meta}"
            ) from None
        if rate <= 0 or not 0 < channels <= 64:
            raise CodecError(f"wav header rate={rate} ch={channels} is out of range")
        frame = channels * (3 if fmt == "s24" else np.dtype(dtype).itemsize)
        if len(segment.payload) % frame:
            raise CodecError(
                f"wav payload of {len(segment.payload)} bytes is not whole frames of {frame} bytes"
            )
        if fmt == "s24":
            raw = np.frombuffer(segment.payload, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
            return ((value << 8) >> 8).reshape(-1, channels), rate  # sign-extend 24 to 32 bits
        return np.frombuffer(segment.payload, dtype=dtype).reshape(-1, channels), rate

    def to_file(self, segment: Segment) -> bytes:
        if segment.meta.get("payload") == "logmel":
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(self.spectrogram(segment)).save(buffer, format="PNG")
            return buffer.getvalue()
        if segment.meta.get("payload") == "file":
            try:
                sf.info(io.BytesIO(segment.payload))
            except Exception as error:
                raise CodecError(f"wav segment is not readable audio: {_reason(error)}") from None
            return segment.payload
        pcm, rate = self.samples(segment)
        fmt = segment.meta["fmt"]
        buffer = io.BytesIO()
        sf.write(buffer, _to_written(pcm, fmt), rate, subtype=FORMATS[fmt][0], format="WAV")
        return buffer.getvalue()


def _from_read(samples: np.ndarray, fmt: str) -> np.ndarray:
    """Samples as soundfile read them (``READ_AS``) -> the stored values."""
    if fmt == "u8":  # soundfile maps u8 to int16 by a left shift of 8 bits around 128
        return ((samples.astype(np.int32) >> 8) + 128).astype(np.uint8)
    if fmt == "s24":  # soundfile puts 24-bit samples in the top bits of an int32
        return samples >> 8
    return samples


def _to_written(pcm: np.ndarray, fmt: str) -> np.ndarray:
    """Stored values -> an array soundfile writes as ``fmt`` unchanged."""
    if fmt == "u8":
        return ((pcm.astype(np.int32) - 128) << 8).astype(np.int16)
    if fmt == "s24":
        return pcm.astype(np.int32) << 8
    return pcm.astype(FORMATS[fmt][1])


def _quantize(samples: np.ndarray, fmt: str) -> np.ndarray:
    if fmt in ("f32", "f64"):
        return samples.astype(FORMATS[fmt][1])
    bits = {"u8": 8, "s16": 16, "s24": 24, "s32": 32}[fmt]
    scale = float(2 ** (bits - 1))
    clipped = np.clip(samples.astype(np.float64), -1.0, 1.0 - 1.0 / scale)
    if fmt == "u8":
        return np.round(clipped * 128 + 128).clip(0, 255).astype(np.uint8)
    return np.round(clipped * scale).astype(np.int32 if bits > 16 else np.int16)


def _reason(error: Exception) -> str:
    """soundfile's message without the in-memory file's repr."""
    return " ".join(str(error).split(">: ")[-1].split())
