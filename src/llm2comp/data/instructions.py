"""Task instructions and the query format of the contrastive stages.

A pair's query is embedded as ``"{instruction}: {query}\n"`` (`format_query`); evaluation puts instructions in the
same format by default (`evaluation/mteb_adapter.py`). Instructions come per source: the public E5 data's, as
LLM2Vec and the LLM2Comp release use them, and those of the built-in pair sets.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

# Task instructions of the public E5 data, as LLM2Vec uses them (llm2vec/dataset/E5Data.py); the LLM2Comp release
# uses the same strings (its quora file alternates the two quora instructions). Query side only.
E5_INSTRUCTIONS = {
    "allnli_split1": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    "allnli_split2": "Retrieve semantically similar text",
    "dureader": "Given a Chinese search query, retrieve web passages that answer the question",
    "eli5_question_answer": "Provided a user question, retrieve the highest voted answers on Reddit ELI5 forum",
    "fever": "Given a claim, retrieve documents that support or refute the claim",
    "hotpot_qa": "Given a multi-hop question, retrieve documents that can help answer the question",
    "miracl": "Given a question, retrieve Wikipedia passages that answer the question",
    "mrtydi": "Given a question, retrieve Wikipedia passages that answer the question",
    "msmarco_passage": "Given a web search query, retrieve relevant passages that answer the query",
    "msmarco_document": "Given a web search query, retrieve relevant documents that answer the query",
    "nq": "Given a question, retrieve Wikipedia passages that answer the question",
    "quora_duplicates_split1": "Given a question, retrieve questions that are semantically equivalent to the given question",
    "quora_duplicates_split2": "Find questions that have the same meaning as the input question",
    "squad": "Retrieve Wikipedia passages that answer the question",
    "t2ranking": "Given a Chinese search query, retrieve web passages that answer the question",
    "trivia_qa": "Retrieve Wikipedia passages that answer the question",
}
# Instructions of the built-in shared pairs (the MTEB task instructions LLM2Vec evaluates with).
SHARED_INSTRUCTIONS = {
    "stsb": "Retrieve semantically similar text",
    "banking77": "Given a online banking query, find the corresponding intents",
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "news": "Given a news headline, retrieve the opening of its article",
    "msrp": "Retrieve semantically similar text",
}
INSTRUCTIONS = {**E5_INSTRUCTIONS, **SHARED_INSTRUCTIONS}
_SPLIT = re.compile(r"_split\d+$")


def batch_source(source: str | None) -> str:
    """The batching group of a source: E5's ``x_split1`` / ``x_split2`` share batches (as in LLM2Vec)."""
    return _SPLIT.sub("", source or "default")


def instruction_for(source: str | None, row: int = 0) -> str:
    """The task instruction of a source; a merged file (``allnli.jsonl``, ``quora_duplicates.jsonl``) alternates
    its splits' instructions by row. Unknown sources: empty (the bare query)."""
    if not source:
        return ""
    if source in INSTRUCTIONS:
        return INSTRUCTIONS[source]
    splits = [INSTRUCTIONS[k] for k in sorted(INSTRUCTIONS) if batch_source(k) == source and k != source]
    return splits[row % len(splits)] if splits else ""


QUERY_TEMPLATE = "{instruction}: {text}\n"  # the recipe's query format; evaluation uses the same by default
TEXT_SLOT = "{text}"  # where a prompt that is a template puts the text (a prompt without it goes before the text)


def format_query(query: str, instruction: str = "") -> str:
    """``"{instruction}: {query}\\n"``; an empty instruction gives the bare query."""
    return QUERY_TEMPLATE.format(instruction=instruction, text=query) if instruction else query


def query_prompt(instruction: str, template: str = QUERY_TEMPLATE) -> str:
    """The prompt of an instruction: ``template`` with the instruction in place and ``{text}`` kept
    (``"Retrieve semantically similar text: {text}\\n"``); an empty instruction gives no prompt ("")."""
    return template.replace("{instruction}", instruction) if instruction else ""


def apply_prompt(prompt: str | None, text: str) -> str:
    """A text with its prompt: a prompt with ``{text}`` is a template (the text goes there, once; braces in the text
    are kept), any other prompt goes before the text, as sentence-transformers puts it. None or "" leave the text."""
    if not prompt:
        return text
    if TEXT_SLOT in prompt:
        head, tail = prompt.split(TEXT_SLOT, 1)
        return head + text + tail
    return prompt + text


def trained_prompts(pairs: Iterable[dict]) -> dict[str, str]:
    """The prompts of the query formats a supervised stage trained with (pairs as `PairDataset` holds them): one per
    source, named by the source (``source_1``, ``source_2``, ... for a source that alternates instructions), and
    ``"query"``, the one most queries had (the first seen of equals). Pairs trained without instructions: none."""
    counts: Counter[str] = Counter()
    by_source: dict[str, list[str]] = {}
    for pair in pairs:
        instruction = pair.get("instruction") or ""
        if instruction:
            counts[instruction] += 1
            seen = by_source.setdefault(str(pair.get("source") or "default"), [])
            if instruction not in seen:
                seen.append(instruction)
    prompts = {}
    for source, instructions in by_source.items():
        for index, instruction in enumerate(instructions, 1):
            prompts[source if len(instructions) == 1 else f"{source}_{index}"] = query_prompt(instruction)
    if counts:
        prompts["query"] = query_prompt(counts.most_common(1)[0][0])
    return prompts
