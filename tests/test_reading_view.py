"""Issue 14: a codec's reading view (``ReadingView``): a WAV field that a classifier only reads is a
log-mel spectrogram by default, a WAV field a model generates stays PCM."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
from mbp.data.read import RawSample
from mbp.protocol import decode_stream
from mbp.resolve import resolve

REGISTRY = """\
pipelines:
  words:
    fields:
      speech: {{type: wav{params}}}
      answer: {{type: text}}
    head: {head}
    model:
      stages:
        - {{backbone: {{type: transformer, heads: 2}}, dim: 32, layers: 1}}
        - {{backbone: {{type: transformer, heads: 2}}, dim: 16, layers: 1, patch: 4}}
"""


def encoded_speech(tmp_path: Path, components, head: str, params: str = "") -> dict[str, str]:
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY.format(head=head, params=params))
    encoder = resolve(str(path), "words", components=components).encoder
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(800), 8000, subtype="PCM_16", format="WAV")
    raw = RawSample("s.tar", "k", {"speech.wav": buffer.getvalue(), "answer.txt": b"yes"})
    return decode_stream(encoder.encode(raw).tokens).segments[0].meta


def test_classifier_reads_wav_as_logmel_by_default(tmp_path: Path, components) -> None:
    assert encoded_speech(tmp_path, components, "{type: classify, label_field: answer}") == {
        "payload": "logmel",
        "rate": "8000",
        "bands": "16",
    }


def test_generated_or_pinned_wav_stays_pcm(tmp_path: Path, components) -> None:
    pcm = {"rate": "8000", "ch": "1", "fmt": "s16"}
    assert encoded_speech(tmp_path, components, "{type: lm}") == pcm  # the lm head writes every field
    pinned = encoded_speech(tmp_path, components, "{type: classify, label_field: answer}", ", payload: pcm")
    assert pinned == pcm
