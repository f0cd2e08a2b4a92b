"""Built-in plugin: the ``wav`` codec."""

from __future__ import annotations

from mbp.hookspecs import Register, hookimpl

from mbp_audio.wav import WavCodec, WavParams


@hookimpl
def mbp_register_codecs(register: Register) -> None:
    register("wav", WavCodec, WavParams)
