"""llm2comp: turn a decoder-only LLM into a text-embedding model with LLM2Comp."""

from .version import __version__

__all__ = ["LLM2Comp", "LLM2CompConfig", "__version__"]


def __getattr__(name: str):
    # imported on first use, so that `llm2comp --help` (llm2comp.cli) does not load torch and transformers
    if name in ("LLM2Comp", "LLM2CompConfig"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'llm2comp' has no attribute {name!r}")
