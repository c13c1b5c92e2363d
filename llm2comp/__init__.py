"""llm2comp: turn a decoder-only LLM into a text-embedding model with LLM2Comp."""

__version__ = "0.1.0"

from .model import LLM2Comp, LLM2CompConfig  # noqa: E402

__all__ = ["LLM2Comp", "LLM2CompConfig", "__version__"]
