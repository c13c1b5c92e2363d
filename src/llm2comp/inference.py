"""Inference: texts -> embeddings for a loaded `LLM2Comp` (`LLM2Comp.encode` is `encode` here).

What is embedded (tokenisation, memory slots, pooling, the fitted normalizer) is the model's; this module batches
(longest first, repeats embedded once), runs the network in eval mode without a graph, and returns rows in input
order, on one device or on opt-in replicas (`replicas.py`). Safe from several threads at once: eval mode holds until
the last concurrent call ends (`evaluating`), and the model serialises its tokenizer calls.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from . import features
from .replicas import model_replicas

if TYPE_CHECKING:
    from .model import LLM2Comp

_MODE_LOCK = threading.Lock()  # train/eval switches of `encode` (see `evaluating`)
# model -> [concurrent encodes, mode before the first]; kept off the model so that copies never inherit it
_EVALUATING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_truncate_dim(truncate_dim: int | None, full: int) -> int:
    """The embedding size `encode` returns: ``truncate_dim`` in [1, full], or the full size."""
    if truncate_dim is None:
        return full
    if not isinstance(truncate_dim, int) or isinstance(truncate_dim, bool) or not 1 <= truncate_dim <= full:
        raise ValueError(f"truncate_dim must be an integer in [1, {full}], got {truncate_dim!r}")
    return truncate_dim


def texts_of_batches(batches: Iterable[dict]) -> list[str]:
    """The texts of a loader of ``{"text": [...]}`` batches (mteb's encoder protocol), in order; None as ''."""
    texts: list[str] = []
    for batch in batches:
        items = batch["text"]
        texts.extend([items] if isinstance(items, str) else (str(t) if t is not None else "" for t in items))
    return texts


def similarity(a, b) -> torch.Tensor:
    """Cosine similarity matrix between two sets of embeddings (numpy or torch; 1-D counts as one row):
    sentence-transformers' ``cos_sim``."""
    from sentence_transformers.util import cos_sim

    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a, dtype=torch.float32)
    b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b, dtype=torch.float32)
    return cos_sim(a, b)


def similarity_pairwise(a, b) -> torch.Tensor:
    """Cosine similarity of row i of `a` with row i of `b` (mteb's encoder protocol asks for it):
    sentence-transformers' ``pairwise_cos_sim``."""
    from sentence_transformers.util import pairwise_cos_sim

    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a, dtype=torch.float32)
    b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b, dtype=torch.float32)
    return pairwise_cos_sim(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]))


def encode(
    model,
    texts: str | Sequence[str],
    batch_size: int = 32,
    prompt: str | None = None,
    normalize_embeddings: bool = False,
    convert_to_numpy: bool = True,
    convert_to_tensor: bool = False,
    show_progress_bar: bool | None = None,
    devices: Sequence[str | torch.device] | None = None,
    truncate_dim: int | None = None,
    **_ignored,
):
    """Embed texts: float32 numpy (n, d) by default, (d,) for a single string, a torch tensor on request.

    Texts are batched by token length (longest first) and returned in input order; a text that occurs more
    than once is embedded once. Empty or whitespace
    strings are valid input (they are embedded like any text; with memory pooling the memory tokens
    alone). Non-string items raise TypeError; batch_size < 1 raises ValueError.

    ``devices`` (opt-in, e.g. ``["cuda:0", "cuda:1"]``) spreads the batches over model replicas on those
    devices, one thread each; without it, nothing runs anywhere but on the model's own device.

    ``truncate_dim`` keeps the first n dimensions (cut after pooling and the fitted normalizer, then
    L2-normalised when ``normalize_embeddings``): a model trained with ``matryoshka_dims`` loses little at
    those sizes (``config.matryoshka_dims``); any other model may be cut too, at a larger loss.
    """
    if isinstance(texts, torch.utils.data.DataLoader):  # mteb's encoder protocol: batches of {"text": [...]}
        texts = texts_of_batches(texts)
        show_progress_bar = bool(show_progress_bar or _ignored.get("show_progress_bar")) and len(texts) >= 4 * batch_size
        return np.asarray(encode(model, texts, batch_size=batch_size, show_progress_bar=show_progress_bar), dtype=np.float32).reshape(len(texts), -1)
    single = isinstance(texts, str)
    if single:
        texts = [texts]
    if isinstance(texts, (bytes, dict)) or not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, not str")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dim = check_truncate_dim(truncate_dim, model.get_sentence_embedding_dimension())
    if not texts:
        empty = torch.empty(0, dim)
        return empty if convert_to_tensor or not convert_to_numpy else empty.numpy()
    slot: dict[str, int] = {}
    inverse = [slot.setdefault(text, len(slot)) for text in texts]
    unique = list(slot)  # a repeated text is tokenized and embedded once (STS sets repeat up to half their sentences)
    token_ids = model.token_ids(unique, prompt)
    features.report_truncation(model, unique, token_ids, prompt)
    result = model.encode_token_ids(token_ids, batch_size=batch_size, normalize_embeddings=normalize_embeddings,
                                   show_progress_bar=show_progress_bar, devices=devices, truncate_dim=truncate_dim)
    if len(unique) < len(texts):
        result = result[torch.tensor(inverse)]
    if single:
        result = result[0]
    if convert_to_tensor or not convert_to_numpy:
        return result
    return result.numpy()

def encode_token_ids(
    model,
    token_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
    normalize_embeddings: bool = False,
    show_progress_bar: bool | None = None,
    devices: Sequence[str | torch.device] | None = None,
    truncate_dim: int | None = None,
) -> torch.Tensor:
    """`encode` for rows already made by `token_ids` (a server that tokenized once to count tokens reuses
    them): a float32 CPU tensor (n, d) in input order. Identical rows are embedded once (STS sets repeat up to
    half their sentences); rows are batched longest first."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    budget = features.text_budget(model)
    too_long = next((i for i, row in enumerate(token_ids) if len(row) > budget), None)
    if too_long is not None:
        raise ValueError(f"token_ids[{too_long}] has {len(token_ids[too_long])} tokens; at most {budget} fit max_length="
                         f"{model.config.max_length} with this pooling (make rows with `token_ids`, which truncates)")
    dim = check_truncate_dim(truncate_dim, model.get_sentence_embedding_dimension())
    slot: dict[tuple[int, ...], int] = {}
    inverse = [slot.setdefault(tuple(row), len(slot)) for row in token_ids]
    unique = [list(row) for row in slot]
    if not unique:
        return torch.empty(0, dim)
    order = sorted(range(len(unique)), key=lambda i: -len(unique[i]))
    if show_progress_bar is None:
        show_progress_bar = len(unique) >= 8 * batch_size
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    result = torch.empty(len(unique), dim, dtype=torch.float32)
    progress = tqdm(total=len(batches), desc="encode", disable=not show_progress_bar)

    def run(replica: LLM2Comp, assigned: list[list[int]]) -> None:
        with torch.inference_mode():
            for index in assigned:
                embeddings = replica.forward(replica.collate([unique[i] for i in index]))["sentence_embedding"].float()[:, :dim]
                if normalize_embeddings:
                    embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
                result[torch.tensor(index)] = embeddings.cpu()
                progress.update()

    try:
        with evaluating(model):
            if devices and len(devices) > 1:
                from concurrent.futures import ThreadPoolExecutor

                replicas = model_replicas(model, devices)
                with ThreadPoolExecutor(len(replicas)) as pool:
                    jobs = [pool.submit(run, r, batches[i :: len(replicas)]) for i, r in enumerate(replicas)]
                    for job in jobs:
                        job.result()
            else:
                run(model if not devices else model_replicas(model, devices)[0], batches)
    finally:
        progress.close()
    return result if len(unique) == len(inverse) else result[torch.tensor(inverse)]

@contextlib.contextmanager
def evaluating(model) -> Iterator[None]:
    """Eval mode for the duration, the previous mode restored when the last of several concurrent callers
    (threads encoding at once) leaves: one thread finishing must not switch dropout back on under another."""
    with _MODE_LOCK:
        state = _EVALUATING.get(model)
        if state is None:
            state = _EVALUATING[model] = [0, model.training]
            model.eval()
        state[0] += 1
    try:
        yield
    finally:
        with _MODE_LOCK:
            state[0] -= 1
            if state[0] == 0:
                del _EVALUATING[model]
                model.train(state[1])
