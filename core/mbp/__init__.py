"""mbp: a plugin platform for multimodal byte modeling with multiscale hierarchical decoders."""

from mbp.errors import MbpError

__version__ = "0.1.0"
__all__ = ["MbpError", "__version__"]
