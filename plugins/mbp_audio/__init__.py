"""Built-in plugin: the ``wav`` codec."""

from __future__ import annotations

from mbp.api import Codec, Register, hookimpl

from mbp_audio.wav import WavCodec, WavParams


@hookimpl
def mbp_register_codecs(register: Register[Codec]) -> None:
    register("wav", WavCodec, WavParams)
