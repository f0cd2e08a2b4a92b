"""Log-mel spectrogram bytes: the view of audio that speech models learn from (Whisper, wav2vec's
baselines, every keyword spotter). A byte model reading 8 kHz PCM must discover frequency analysis from
phase-scrambled samples; reading log-mel frames it starts from the representation a logistic regression
already scores 0.9+ on. One byte a band and frame, frame by frame, so a spectrogram is an image whose
rows are time: the patch-aligned packing that works for pixels works here too.
"""

from __future__ import annotations

import numpy as np


def mel_filterbank(rate: int, bands: int, nfft: int) -> np.ndarray:
    """Triangular filters (bands, nfft // 2 + 1) equally spaced on the HTK mel scale up to rate / 2."""

    def mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges_mel = np.linspace(0.0, float(mel(np.array(rate / 2.0))), bands + 2)
    edges_hz = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(nfft, 1.0 / rate)
    bank = np.zeros((bands, len(bins)), dtype=np.float32)
    for band in range(bands):
        low, mid, high = edges_hz[band : band + 3]
        rising = (bins - low) / max(mid - low, 1e-9)
        falling = (high - bins) / max(high - mid, 1e-9)
        bank[band] = np.clip(np.minimum(rising, falling), 0.0, None)
    return bank


def frame_sizes(rate: int, frame_ms: float, hop_ms: float) -> tuple[int, int, int]:
    """(frame, hop, nfft) in samples for a rate; nfft is the next power of two above the frame."""
    frame = max(2, round(rate * frame_ms / 1000))
    hop = max(1, round(rate * hop_ms / 1000))
    return frame, hop, 1 << (frame - 1).bit_length()


def log_mel_power(samples: np.ndarray, rate: int, bands: int, frame_ms: float, hop_ms: float) -> np.ndarray:
    """Mel power in dB, (frames, bands), of mono float samples; a clip shorter than one frame is
    zero-padded to one frame so that every clip has at least one row."""
    frame, hop, nfft = frame_sizes(rate, frame_ms, hop_ms)
    signal = np.asarray(samples, dtype=np.float32).reshape(-1)
    if len(signal) < frame:
        signal = np.pad(signal, (0, frame - len(signal)))
    frames = np.lib.stride_tricks.sliding_window_view(signal, frame)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(frame).astype(np.float32), nfft)) ** 2
    mel = power @ mel_filterbank(rate, bands, nfft).T
    return (10.0 * np.log10(mel + 1e-10)).astype(np.float32)


def quantize_db(decibels: np.ndarray, floor_db: float) -> np.ndarray:
    """dB -> bytes relative to the clip's loudest cell: 255 at the peak, 0 at ``floor_db`` below it.
    Relative levels make the bytes independent of recording gain, the nuisance a small model can least
    afford to learn."""
    peak = float(decibels.max()) if decibels.size else 0.0
    scaled = (decibels - (peak - floor_db)) * (255.0 / floor_db)
    return np.round(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def vary_speed(samples: np.ndarray, rate: int, rng: np.random.Generator, spread: float = 0.1) -> np.ndarray:
    """The clip played up to ``spread`` faster or slower (tempo and pitch together, as Kaldi's speed
    perturbation): speakers differ in both, and a spectrogram shows it as a stretch in time and band."""
    import soxr

    speed = float(rng.uniform(1.0 - spread, 1.0 + spread))
    return np.asarray(soxr.resample(samples, rate, rate / speed), dtype=np.float32)


def mask_bands_and_frames(
    cells: np.ndarray,
    rng: np.random.Generator,
    masks: int = 2,
    band_share: float = 0.125,
    time_share: float = 0.1,
) -> np.ndarray:
    """SpecAugment (Park et al. 2019): ``masks`` runs of bands and ``masks`` runs of frames set to the
    floor, each up to the given share wide, so no single band or moment decides the class."""
    out = cells.copy()
    frames, bands = out.shape
    for size, axis in ((bands, 1), (frames, 0)):
        widest = max(1, int(size * (band_share if axis == 1 else time_share)))
        for _ in range(masks):
            width = int(rng.integers(0, widest + 1))
            start = int(rng.integers(0, max(1, size - width + 1)))
            if axis == 1:
                out[:, start : start + width] = 0
            else:
                out[start : start + width] = 0
    return out
