"""The settings a training stage's data is read with: what the dataset builders take (stage 1's `pretext_dataset`,
the contrastive stages' `build_contrastive_dataset`), made from a `TrainConfig` by `TrainConfig.data_settings`."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataSettings:
    source: str  # the data source (`data`): a file, a folder, hf:NAME, builtin:NAME, sources joined with +
    field: str  # the text field of .jsonl / .parquet records
    min_chars: int  # shorter texts are left out
    truncate_long: bool  # stage 1: texts over the input budget are cut (false: dropped)
    max_samples: int | None  # a seeded draw of this many examples (None: all)
    seed: int
    probe_holdout: int  # stage 1: the last paragraphs held out for the compression probe (0: none)
    probe: bool  # stage 1: a compression probe reads the held-out paragraphs (too few of them is then an error)
    decontaminate: str | None  # contrastive: "auto", a benchmark folder, or "off" (data/decontamination.py)
    max_pairs_per_source: int | None  # supervised: a seeded draw of at most this many pairs per source
    query_instructions: bool  # supervised: instructions on the query side
    group_size: int  # supervised: the global batch size, which each source's pairs are grouped in
