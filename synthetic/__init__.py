"""Synthetic corpora for offline runs and tests: reviews with a sentiment (reviews.py, the tiny
IMDb preset), dialogues whose right answer is known (dialogues.py, the tiny HH preset) and posts
whose best summary is known (summaries.py, the tiny TL;DR preset)."""

import importlib

# a compact vocabulary's name: (module, the function that lists its GPT-2 ids)
COMPACT_VOCABS = {"dialogue": ("synthetic.dialogues", "dialogue_vocab"),
                  "summary": ("synthetic.summaries", "summary_vocab")}


def compact_vocab(name: str) -> list[int]:
    """The GPT-2 ids of a synthetic corpus's compact vocabulary (COMPACT_VOCABS), imported only
    when asked for (the corpora import data.py, which imports this package)."""
    module, fn = COMPACT_VOCABS[name]
    return getattr(importlib.import_module(module), fn)()
