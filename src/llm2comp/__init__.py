"""llm2comp: turn a decoder-only LLM into a text-embedding model with LLM2Comp."""

from .model import LLM2Comp, LLM2CompConfig
from .version import __version__

__all__ = ["LLM2Comp", "LLM2CompConfig", "__version__"]
