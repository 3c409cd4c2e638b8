"""Synthetic TL;DR: short Reddit-like posts from a small fixed grammar, each stating 3 or 4 facts
whose importance the text says, for an offline tiny TL;DR preset and the tests (no download).

A post, in the TL;DR SFT set's layout (the prompt ends with the cue, a summary is " <summary>"):

    SUBREDDIT: r/advice
    TITLE: Rough week
    POST: Not a big deal, but my cat is sick. The main thing is that my landlord raised the rent.
    Also, the heater in my flat is broken.
    TL;DR:

Every post has one main fact, one "also" fact, one minor fact and, half the time, a fourth that is
"also" or "minor", in random order, each sentence opening with one of its importance's markers. A
summary names facts by their short forms ("rent raised", "heater broken"), joined by ", ", ending
with ".", maybe with filler words around them (" so basically rent raised, cat sick and stuff.").

The rule (summary_reward; higher is better). In the summary, the facts' short forms are found
left to right as whole words (case ignored); every other word is padding. Then

    r = sum over the distinct facts of the post it names of WEIGHTS[importance]  (3, 2, 0.5)
        - FACT_COST per fact named (1; a fact named twice pays twice)
        - WRONG_COST per fact named that the post does not state (2, on top of its FACT_COST)
        - WORD_COST per padding word (0.25; a word is a run of letters and apostrophes).

So a main fact is worth +2, an "also" fact +1, a minor one -0.5, a wrong one -3, a filler word
-0.25, and the best summary (best_summary) names the main and every "also" fact and nothing else:
3 or 4 by the rule. A post's own long wording copied into the summary counts as padding.

As in TL;DR, where the two summaries of a comparison come from one pool of policies, both sides of
a pair are drawn alike (candidate): each fact of the post kept with probability 1/2 (one at least),
a fact not in the post added with probability P_WRONG, the order shuffled, filler words sometimes.
The label is noisy: the first drawn summary a is chosen over b with probability

    P(a chosen) = sigmoid((r(a) - r(b)) / TAU),   TAU = 1,

so equal scores are a coin flip; pairs of two identical summaries are dropped by preferences.py.
The reference summaries (the SFT set's labels, the win rates' references) are a decent but
imperfect human (reference): the main fact with probability 0.9, each "also" fact 0.7, each minor
fact 0.3, a wrong fact 0.05, in order of importance, filler sometimes. About a quarter of them
are the best summary; a policy that writes best_summary beats the rest by the rule.

hh_tldr/preferences.py reads them as `--dataset synthetic_tldr`: its train split the comparisons
(prompt, chosen "TL;DR: ...", rejected), and its judge split held-out ones; its sft, test and
validation splits posts with a reference (prompt ending "TL;DR:", label); summary_reward is the
rule as a judge.
"""

import functools
import math
import os
import random
import re

from data import GPT2_EOS, gpt2_encoding

from plumbing.utils import atomic_write, seed_for

TLDR = "\nTL;DR:"  # the cue that ends every prompt (hh_tldr/preferences.py's tldr_prompt)

FACTS = [  # (the post's wording, the summary's short form): no short form inside another
    # short form or inside a post's wording, so a copied sentence names no fact
    ("my landlord raised the rent", "rent raised"),
    ("the heater in my flat is broken", "heater broken"),
    ("my neighbour plays loud music at night", "loud neighbour"),
    ("my boss cut my hours", "hours cut"),
    ("my car failed its inspection", "car failed inspection"),
    ("my sister is getting married", "sister getting married"),
    ("my best friend moved away", "best friend left"),
    ("I lost my wallet on the bus", "lost wallet"),
    ("my cat is sick", "cat sick"),
    ("my phone screen cracked", "phone cracked"),
    ("I failed my driving test", "failed driving test"),
    ("my roommate never does the dishes", "roommate skips dishes"),
    ("my partner forgot my birthday", "partner forgot birthday"),
    ("I got a job offer in another city", "job offer elsewhere"),
    ("my laptop died before a deadline", "laptop dead"),
    ("my parents want me to move home", "parents want me home"),
    ("I have a big exam on Monday", "Monday exam"),
    ("my flight got cancelled", "flight cancelled"),
    ("my coworker takes credit for my work", "coworker steals credit"),
    ("I sprained my ankle", "sprained ankle"),
    ("my bank charged me a late fee", "bank fee"),
    ("my brother never paid back the money he borrowed", "brother owes money"),
    ("the wifi at home keeps dropping", "wifi drops"),
    ("my dog chewed my shoes", "dog chewed shoes"),
    ("my ex texted me again", "ex texting"),
    ("my teacher lost my essay", "essay lost"),
    ("the bus to work is always late", "bus late"),
    ("I forgot my friend's wedding gift", "forgot gift"),
]
MARKERS = {  # importance: the two ways a post's sentence says it
    "main": ("The main thing is that", "Most importantly,"),
    "also": ("Also,", "On top of that,"),
    "minor": ("Not a big deal, but", "A minor thing:"),
}
WEIGHTS = {"main": 3.0, "also": 2.0, "minor": 0.5}
FACT_COST, WRONG_COST, WORD_COST = 1.0, 2.0, 0.25
TAU = 1.0  # the labels' noise: P(a chosen over b) = sigmoid((r(a) - r(b)) / TAU)

SUBREDDITS = ["advice", "relationships", "personalfinance", "offmychest"]
TITLES = ["Rough week", "Need advice", "What should I do?", "Everything at once"]
OPENERS = ["so basically", "long story short:", "ugh,"]  # filler before the facts
CLOSERS = ["and stuff", "lol", "idk"]  # filler after them
P_KEEP, P_WRONG, P_OPENER, P_CLOSER = 0.5, 0.2, 0.3, 0.2  # candidate summaries (pairs)
P_REFERENCE = {"main": 0.9, "also": 0.7, "minor": 0.3}  # reference summaries: each fact kept
P_REF_WRONG, P_REF_OPENER, P_REF_CLOSER = 0.05, 0.2, 0.1
# rows; "judge": held-out comparisons (never trained on), the judge's agreement is measured on
SUMMARY_SIZES = {"train": 20000, "test": 400, "validation": 400, "sft": 20000, "judge": 1000}


# ----------------------------------------------------------------------------- drawing


def _post(rng) -> tuple[str, list[tuple[int, str]]]:
    """A prompt (ending with the cue) and its facts: (index in FACTS, importance), in post order."""
    levels = ["main", "also", "minor"] + ([rng.choice(("also", "minor"))] if rng.random() < 0.5
                                          else [])
    facts = list(zip(rng.sample(range(len(FACTS)), len(levels)), levels))
    rng.shuffle(facts)
    body = " ".join(f"{rng.choice(MARKERS[level])} {FACTS[i][0]}." for i, level in facts)
    header = f"SUBREDDIT: r/{rng.choice(SUBREDDITS)}\nTITLE: {rng.choice(TITLES)}\nPOST: "
    return header + body + TLDR, facts


def _summary(rng, facts: list[int], p_opener: float, p_closer: float) -> str:
    """" <facts' short forms, joined by ', '>." with filler words before and after, sometimes."""
    words = ([rng.choice(OPENERS)] if rng.random() < p_opener else []) + [
        ", ".join(FACTS[i][1] for i in facts)] + (
        [rng.choice(CLOSERS)] if rng.random() < p_closer else [])
    return " " + " ".join(words) + "."


def _wrong(rng, facts) -> int:
    """A fact the post does not state."""
    return rng.choice(sorted(set(range(len(FACTS))) - {i for i, _ in facts}))


def candidate(rng, facts) -> str:
    """A summary of the imperfect "policy" both sides of a pair are drawn from."""
    kept = [i for i, _ in facts if rng.random() < P_KEEP] or [rng.choice(facts)[0]]
    if rng.random() < P_WRONG:
        kept.append(_wrong(rng, facts))
    rng.shuffle(kept)
    return _summary(rng, kept, P_OPENER, P_CLOSER)


def reference(rng, facts) -> str:
    """A human's summary: decent, imperfect; the facts kept in order of importance."""
    by_level = sorted(facts, key=lambda f: list(WEIGHTS).index(f[1]))  # stable: post order within
    kept = [i for i, level in by_level if rng.random() < P_REFERENCE[level]] or [by_level[0][0]]
    if rng.random() < P_REF_WRONG:
        kept.append(_wrong(rng, facts))
    return _summary(rng, kept, P_REF_OPENER, P_REF_CLOSER)


def prefer_first(rng, reward_a: float, reward_b: float) -> bool:
    """The noisy label: True with probability sigmoid((reward_a - reward_b) / TAU)."""
    return rng.random() < 1 / (1 + math.exp(-(reward_a - reward_b) / TAU))


def synthetic_comparisons(n: int, seed: int) -> list[dict]:
    """n rows in the TL;DR comparisons' layout: {"prompt": the post without the cue, "chosen",
    "rejected": "TL;DR: <summary>"}, deterministic for a seed."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, facts = _post(rng)
        a, b = candidate(rng, facts), candidate(rng, facts)
        if not prefer_first(rng, summary_reward(prompt, a), summary_reward(prompt, b)):
            a, b = b, a
        post = prompt.removesuffix(TLDR)
        rows.append({"prompt": post, "chosen": "TL;DR:" + a, "rejected": "TL;DR:" + b})
    return rows


def synthetic_references(n: int, seed: int) -> list[dict]:
    """n rows in the TL;DR SFT set's layout: {"prompt": the post and cue, "label": " <summary>"}."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, facts = _post(rng)
        rows.append({"prompt": prompt, "label": reference(rng, facts)})
    return rows


def summary_split(split: str, seed: int = 0, sizes: dict | None = None) -> list[dict]:
    """The rows of a split (SUMMARY_SIZES): train and judge comparisons, sft/test/validation posts
    with their references; each split its own stream of the seed."""
    sizes = sizes or SUMMARY_SIZES
    if split not in sizes:
        raise ValueError(f"the synthetic summaries have splits {', '.join(sizes)}, not {split!r}")
    draw = synthetic_comparisons if split in ("train", "judge") else synthetic_references
    return draw(sizes[split], seed_for(seed, list(SUMMARY_SIZES).index(split)))


def write_synthetic_summaries(folder: str, seed: int = 0, sizes: dict | None = None) -> str:
    """The synthetic summaries as a dataset folder in the hub layout (train-00000-of-00001.parquet,
    ...), readable by --dataset FOLDER exactly as --dataset synthetic_tldr with the same seed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    for split in sizes or SUMMARY_SIZES:
        table = pa.Table.from_pylist(summary_split(split, seed, sizes))
        atomic_write(os.path.join(folder, f"{split}-00000-of-00001.parquet"),
                     lambda tmp, table=table: pq.write_table(table, tmp))
    return folder


# ----------------------------------------------------------------------------- the rule


@functools.cache
def _sentences() -> dict:
    """{a post's sentence: (index in FACTS, importance)} of every sentence the grammar writes."""
    return {f"{m} {long}.": (i, level) for level, ms in MARKERS.items() for m in ms
            for i, (long, _) in enumerate(FACTS)}


@functools.cache
def _short_forms() -> re.Pattern:
    return re.compile(r"\b(" + "|".join(re.escape(s) for _, s in
                                        sorted(FACTS, key=lambda f: -len(f[1]))) + r")\b",
                      re.IGNORECASE)


def post_facts(prompt: str) -> dict[int, str]:
    """{index in FACTS: importance} of the facts a post states (with or without the cue)."""
    body = prompt.removesuffix(TLDR.strip()).rstrip().rsplit("POST: ", 1)
    facts = [_sentences().get(s) for s in re.split(r"(?<=\.) ", body[-1])]
    if len(body) < 2 or None in facts:
        raise ValueError(f"not a synthetic TL;DR prompt: {prompt[-80:]!r}")
    return dict(facts)


def summary_reward(prompt: str, summary: str) -> float:
    """The rule as a judge (module docstring): the weights of the post's facts the summary names,
    less FACT_COST per fact named, WRONG_COST per fact the post does not state, WORD_COST per
    padding word."""
    facts = post_facts(prompt)
    index = {s.lower(): i for i, (_, s) in enumerate(FACTS)}
    named = [index[m.group(0).lower()] for m in _short_forms().finditer(summary)]
    padding = re.findall(r"[A-Za-z']+", _short_forms().sub(" ", summary))
    return (sum(WEIGHTS[facts[i]] for i in set(named) if i in facts) - FACT_COST * len(named)
            - WRONG_COST * sum(i not in facts for i in named) - WORD_COST * len(padding))


def best_summary(prompt: str) -> str:
    """The summary the rule scores highest: the main fact, then the "also" facts in post order."""
    facts = post_facts(prompt)
    keep = [i for level in ("main", "also") for i, lv in facts.items() if lv == level]
    return " " + ", ".join(FACTS[i][1] for i in keep) + "."


def summary_vocab() -> list[int]:
    """Every GPT-2 id of every prompt and summary the grammar can write (prompt and summary encoded
    apart, as preferences.py's convert does), plus EOS: the synthetic summaries' compact vocabulary.
    GPT-2's pre-tokenizer splits at a word's leading space and around punctuation, so encoding each
    piece (a header, a sentence after its space, the cue; a summary's words) covers whole texts."""
    enc = gpt2_encoding()
    texts = [f"SUBREDDIT: r/{s}\nTITLE: {t}\nPOST:" for s in SUBREDDITS for t in TITLES]
    texts += [" " + s for s in _sentences()] + [TLDR]
    texts += [" " + w for w in OPENERS + CLOSERS + [s for _, s in FACTS]] + [",", "."]
    return sorted({GPT2_EOS}.union(*enc.encode_ordinary_batch(texts)))
