"""What mteb records about a model: a display name, a revision that fingerprints the current weights, its size, what
it was trained on (`training_datasets`, in mteb's names) and, given one, the `loader` mteb can load it with (the
evaluation side's `load_mteb_model`, which `MTEBEncoder` and `register_mteb_model` pass in).

Built here, outside both the model and the evaluation package, so that `LLM2Comp.mteb_model_meta` (mteb recognises
an encoder by that attribute: `mteb.evaluate(model, tasks)` takes an LLM2Comp as it takes a SentenceTransformer) and
the evaluation side's `MTEBEncoder` share it without the model importing evaluation code. mteb is imported only when
the metadata is asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .fingerprint import model_fingerprint

# mteb's names of what the training data holds: mteb tasks whose train splits a built-in pair set or a source of the
# E5 data is made from (in-domain for mteb's zero-shot checks), and for the NLI pairs, which no mteb task holds, the
# names mteb's own model metadata gives SNLI and MultiNLI
NLI_DATASETS = ("SNLI", "MNLI")
BUILTIN_DATASETS = {
    "builtin:shared-pairs": ("STSBenchmark", "Banking77Classification", "SciFact"),
    "builtin:stsb-scores": ("STSBenchmark",),
    "builtin:nli-pairs": NLI_DATASETS,
}
SOURCE_DATASETS = {  # a pair source (file stem of a pairs folder, decontamination's per-source keys)
    "stsb": ("STSBenchmark",), "stsb-scores": ("STSBenchmark",), "banking77": ("Banking77Classification",),
    "scifact": ("SciFact",), "allnli": NLI_DATASETS, "msmarco_passage": ("MSMARCO",), "msmarco_document": ("MSMARCO",),
    "nq": ("NQ",), "hotpot_qa": ("HotpotQA",), "fever": ("FEVER",), "miracl": ("MIRACLRetrieval",),
    "mrtydi": ("MrTidyRetrieval",), "dureader": ("DuRetrieval",), "t2ranking": ("T2Reranking",),
    "quora_duplicates": ("QuoraRetrieval",),
}


def display_name(model) -> str:
    """``llm2comp/<backbone>-<pooling>``, the name mteb records unless one is given."""
    base = str(model.config.base_model).rstrip("/").replace("\\", "/").split("/")[-1] or "model"
    return f"llm2comp/{base}-{model.config.pooling}"


def mteb_model_meta(model, name: str | None = None, use_instructions: bool | None = None, loader=None,
                    loader_kwargs: dict | None = None):
    """mteb's `ModelMeta` of ``model`` as it is now (fresh on every call: the revision follows the weights), with what
    it was trained on (`training_datasets`) and, where given, its ``loader`` (with the folder the model was loaded
    from where it is known: ``model.name_or_path``). A bare model's metadata has no loader: `mteb.evaluate(model,
    tasks)` needs none, and the loader lives with `MTEBEncoder`, above the model. ``use_instructions`` defaults to:
    the model has prompts."""
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    config = getattr(model, "config", None)
    path = getattr(model, "name_or_path", None)
    if use_instructions is None:
        use_instructions = bool(getattr(config, "prompts", None))
    return ModelMeta.create_empty(
        overwrites=dict(
            loader=loader,
            loader_kwargs={**({"model_name_or_path": str(path)} if path and loader else {}), **(loader_kwargs or {})},
            training_datasets=training_datasets(config),
            name=name or display_name(model),
            revision=model_fingerprint(model, config),
            n_parameters=sum(p.numel() for p in model.parameters()),
            embed_dim=model.get_sentence_embedding_dimension(),
            max_tokens=getattr(config, "max_length", None),
            similarity_fn_name=ScoringFunction.COSINE,
            framework=["PyTorch"],
            use_instructions=use_instructions,
            open_weights=True,
        )
    )


def training_datasets(config: Any) -> set[str]:
    """mteb's names of the datasets the model's recorded training stages read (`BUILTIN_DATASETS`,
    `SOURCE_DATASETS`): built-in pair sets by name, a pairs folder or file by its sources. Data mteb has no name for
    (news, a corpus file) adds nothing; no stage (a zero-shot pooling of a backbone) gives the empty set."""
    from .data.instructions import batch_source

    names: set[str] = set()
    stages = config.get("stages") if isinstance(config, dict) else getattr(config, "stages", None)
    for stage in stages or []:
        sources = set((stage.get("decontamination") or {}).get("per_source") or {})
        for part in str(stage.get("data") or "").split("+"):
            builtin = next((k for k in BUILTIN_DATASETS if part == k or part.startswith(k + ":")), None)
            if builtin is not None:
                names.update(BUILTIN_DATASETS[builtin])
                continue
            path = Path(part).expanduser()
            if path.is_dir():
                sources.update(f.stem for f in path.glob("*.jsonl"))
            elif path.suffix == ".jsonl":
                sources.add(path.stem)
        for source in sources:
            names.update(SOURCE_DATASETS.get(source, SOURCE_DATASETS.get(batch_source(source), ())))
    return names
