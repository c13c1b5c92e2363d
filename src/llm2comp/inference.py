"""Inference: texts -> embeddings for a loaded `LLM2Comp` (`LLM2Comp.encode` is `InferenceMixin.encode` here).

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

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.instructions import apply_prompt
from .prompts import DOCUMENT_PROMPTS, mteb_prompt, resolve_prompt
from .replicas import model_replicas

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


PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")  # sentence-transformers' `quantize_embeddings`
# what mteb's encoder protocol passes with a DataLoader (besides batch_size, show_progress_bar, precision): it picks
# the model's prompt for the task and side (`mteb_prompt`); nothing else is accepted silently
MTEB_ARGUMENTS = ("task_metadata", "hf_split", "hf_subset", "prompt_type")


def run_devices(device, devices) -> list[str | torch.device] | None:
    """Where `encode` runs: ``devices``, or ``device`` (one device, or a list as sentence-transformers takes it)."""
    if device is None:
        return list(devices) if devices else None
    if devices:
        raise ValueError("give device= or devices=, not both")
    return [check_device(d) for d in (device if isinstance(device, (list, tuple)) else [device])]


def check_device(device: str | torch.device) -> torch.device:
    """A device this machine has, or a ValueError naming it."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"invalid device {device!r}: {error}") from None
    if parsed.type == "cuda" and (not torch.cuda.is_available() or (parsed.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {device!r} is not available ({torch.cuda.device_count()} CUDA device(s) here)")
    return parsed


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
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


class InferenceMixin:
    """Texts -> embeddings, as methods of `LLM2Comp` (which mixes this class in, with `FeaturesMixin`)."""

    _evaluating = evaluating
    similarity = staticmethod(similarity)
    similarity_pairwise = staticmethod(similarity_pairwise)  # with `mteb_model_meta`: mteb's EncoderProtocol

    def encode(
        self,
        texts: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | torch.device | Sequence[str | torch.device] | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        devices: Sequence[str | torch.device] | None = None,
        calibration_embeddings: np.ndarray | None = None,
        ranges: np.ndarray | None = None,
        **mteb_arguments,
    ):
        """Embed texts: float32 numpy (n, d) by default, (d,) for a single string, a torch tensor on request; the arguments
        of sentence-transformers' ``SentenceTransformer.encode`` mean what they mean there.

        Texts are batched by token length (longest first) and returned in input order; a text that occurs more
        than once is embedded once. Empty or whitespace
        strings are valid input (they are embedded like any text; with memory pooling the memory tokens
        alone). Non-string items raise TypeError; batch_size < 1 raises ValueError; an argument encode does not know
        raises TypeError (it is never silently ignored).

        ``prompt`` (a text put before each text, or a template with ``{text}``) wins over ``prompt_name`` (a key of
        ``model.prompts``; an unknown one is a ValueError); with neither, ``model.default_prompt_name``'s prompt applies.

        ``precision``: ``float32``, or ``int8`` / ``uint8`` / ``binary`` / ``ubinary`` through sentence-transformers'
        ``quantize_embeddings``: int8/uint8 buckets per dimension come from ``ranges`` ((2, d) min/max), else from
        ``calibration_embeddings``, else from the embeddings of this call (then a single text cannot be quantized).

        ``device``: run on this device (the model's own, or a copy of it kept there, see ``devices``); a list of devices is
        ``devices``. ``devices`` (opt-in, e.g. ``["cuda:0", "cuda:1"]``) spreads the batches over model replicas on those
        devices, one thread each; without either, nothing runs anywhere but on the model's own device.

        ``truncate_dim`` keeps the first n dimensions (cut after pooling and the fitted normalizer, then
        L2-normalised when ``normalize_embeddings``): a model trained with ``matryoshka_dims`` loses little at
        those sizes (``config.matryoshka_dims``); any other model may be cut too, at a larger loss.

        mteb (its encoder protocol) passes a DataLoader of ``{"text": [...]}`` batches with ``task_metadata``,
        ``hf_split``, ``hf_subset`` and ``prompt_type``: the prompt is then the model's for that task and side
        (`mteb_prompt`), and the result a (n, d) array.
        """
        unknown = sorted(set(mteb_arguments) - set(MTEB_ARGUMENTS))
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            raise TypeError(f"encode() got unexpected keyword argument{'s' if len(unknown) > 1 else ''} {names}")
        if output_value != "sentence_embedding":
            raise ValueError(f"output_value={output_value!r}: an LLM2Comp model gives sentence embeddings only")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if isinstance(texts, torch.utils.data.DataLoader):  # mteb's encoder protocol: batches of {"text": [...]}
            texts = texts_of_batches(texts)
            if prompt is None and prompt_name is None and mteb_arguments.get("task_metadata") is not None:
                prompt = mteb_prompt(self, mteb_arguments["task_metadata"], mteb_arguments.get("prompt_type"))
            show_progress_bar = bool(show_progress_bar) and len(texts) >= 4 * batch_size
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
        devices = run_devices(device, devices)
        if devices and len(devices) == 1 and torch.device(devices[0]) == self.device:
            devices = None  # the model's own device: no replica (nor a replaced replica cache)
        prompt = resolve_prompt(self.prompts, self.default_prompt_name, prompt, prompt_name)
        dim = check_truncate_dim(truncate_dim, self.get_sentence_embedding_dimension())
        if not texts:
            empty = torch.empty(0, dim)
            return empty if convert_to_tensor or not convert_to_numpy else empty.numpy()
        slot: dict[str, int] = {}
        inverse = [slot.setdefault(text, len(slot)) for text in texts]
        unique = [apply_prompt(prompt, text) for text in slot]  # a repeated text is embedded once (STS repeats many)
        token_ids = self.token_ids(unique)
        self.report_truncation(unique, token_ids, None)
        result = self.encode_token_ids(token_ids, batch_size=batch_size, normalize_embeddings=normalize_embeddings,
                                       show_progress_bar=show_progress_bar, devices=devices, truncate_dim=truncate_dim)
        if len(unique) < len(texts):
            result = result[torch.tensor(inverse)]
        if precision != "float32":
            from sentence_transformers import quantize_embeddings

            result = torch.from_numpy(quantize_embeddings(result.numpy(), precision=precision, ranges=ranges,
                                                          calibration_embeddings=calibration_embeddings))
        if single:
            result = result[0]
        if convert_to_tensor or not convert_to_numpy:
            return result
        return result.numpy()

    def encode_query(self, texts: str | Sequence[str], prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """`encode` for queries (retrieval): without ``prompt_name`` or ``prompt``, the model's ``"query"`` prompt, as
        sentence-transformers' ``encode_query`` (none when the model has none: like there, not the default prompt)."""
        if prompt_name is None and prompt is None:
            prompt_name, prompt = ("query", None) if "query" in self.prompts else (None, "")
        return self.encode(texts, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_document(self, texts: str | Sequence[str], prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """`encode` for documents (a retrieval corpus): without ``prompt_name`` or ``prompt``, the first of the model's
        ``"document"``, ``"passage"``, ``"corpus"`` prompts, as sentence-transformers' ``encode_document``."""
        if prompt_name is None and prompt is None:
            prompt_name = next((name for name in DOCUMENT_PROMPTS if name in self.prompts), None)
            prompt = "" if prompt_name is None else None
        return self.encode(texts, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_token_ids(
        self,
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
        budget = self.text_budget()
        too_long = next((i for i, row in enumerate(token_ids) if len(row) > budget), None)
        if too_long is not None:
            raise ValueError(f"token_ids[{too_long}] has {len(token_ids[too_long])} tokens; at most {budget} fit max_length="
                             f"{self.config.max_length} with this pooling (make rows with `token_ids`, which truncates)")
        dim = check_truncate_dim(truncate_dim, self.get_sentence_embedding_dimension())
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

        def run(replica, assigned: list[list[int]]) -> None:
            with torch.inference_mode():
                for index in assigned:
                    embeddings = replica.forward(replica.collate([unique[i] for i in index]))["sentence_embedding"].float()[:, :dim]
                    if normalize_embeddings:
                        embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
                    result[torch.tensor(index)] = embeddings.cpu()
                    progress.update()

        try:
            with evaluating(self):
                if devices and len(devices) > 1:
                    from concurrent.futures import ThreadPoolExecutor

                    replicas = model_replicas(self, devices)
                    with ThreadPoolExecutor(len(replicas)) as pool:
                        jobs = [pool.submit(run, r, batches[i :: len(replicas)]) for i, r in enumerate(replicas)]
                        for job in jobs:
                            job.result()
                else:
                    run(self if not devices else model_replicas(self, devices)[0], batches)
        finally:
            progress.close()
        return result if len(unique) == len(inverse) else result[torch.tensor(inverse)]
