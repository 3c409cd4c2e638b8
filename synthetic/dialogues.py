"""Synthetic dialogues: single-turn HH transcripts from a small fixed grammar, for the offline
tiny HH preset and the tests (no download).

A question asks one fact of a table. As in HH, where both replies are samples of one model and the
chosen one is only the better of the two, each reply here is drawn alike: the correct fact with
probability P_RIGHT, else a wrong value from the same table, in the same sentence, after opening
words drawn independently ("Sure! "). The rule prefers the correct reply; of two correct or two
wrong replies either is "chosen" (a coin flip: a pair without signal, as annotators' ties in HH).
So the chosen side is right only 3/4 of the time and SFT on it learns that share; only the contrast
between the two sides says which answer is right. (An earlier version made every chosen reply
correct: SFT on the chosen side was then the optimum itself, and no method could improve on it.)

hh_tldr/preferences.py reads them as `--dataset synthetic`; dialogue_reward is the rule as a judge.
"""

import functools
import os
import random
import re

from data import GPT2_EOS, gpt2_encoding

from plumbing.utils import atomic_write, seed_for

# HH's transcript layout, which the rows follow: "\n\nHuman: <question>\n\nAssistant: <reply>"
ASSISTANT = "\n\nAssistant:"

NUMBERS = "zero one two three four five six seven eight nine ten".split()
FACTS = [  # (question phrasings, answer sentence, {subject: correct value})
    (("What does a {} say?", "What sound does a {} make?"), "A {} says {}.",
     dict(cow="moo", dog="woof", cat="meow", duck="quack", sheep="baa", pig="oink", owl="hoot",
          lion="roar")),
    (("What color is {}?", "Which color is {}?"), "{} is {}.",
     {"the sky": "blue", "grass": "green", "snow": "white", "coal": "black", "a banana": "yellow",
      "a tomato": "red", "a carrot": "orange", "milk": "white"}),
    (("What is the opposite of {}?", "Tell me the opposite of {}."), "The opposite of {} is {}.",
     dict(hot="cold", big="small", up="down", fast="slow", day="night", happy="sad", full="empty",
          early="late", open="closed", old="new")),
    (("What is {}?", "How much is {}?"), "{} is {}.",
     {f"{NUMBERS[a]} plus {NUMBERS[b]}": NUMBERS[a + b] for a in range(11) for b in range(11 - a)}),
]
OPENERS = ["", "Hi! ", "Hello. ", "Quick question. "]
PREFIXES = ["", "Sure! ", "Good question. "]
P_RIGHT = 0.5  # the chance that a reply states the correct value
SYNTHETIC_SIZES = {"train": 20000, "test": 400, "validation": 400}  # rows of --dataset synthetic


def _sentence(template: str, subject: str, value: str) -> str:
    s = template.format(subject, value)
    return s[0].upper() + s[1:]


def _reply(rng, answer: str, subject: str, table: dict) -> tuple[str, bool]:
    """One reply of the imperfect "model": (its text, whether it states the correct value)."""
    right = rng.random() < P_RIGHT
    value = table[subject] if right else rng.choice(sorted(set(table.values()) - {table[subject]}))
    return rng.choice(PREFIXES) + _sentence(answer, subject, value), right


def synthetic_dialogues(n: int, seed: int) -> list[dict]:
    """n rows {"chosen", "rejected"} of HH transcripts, deterministic for a seed."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        questions, answer, table = rng.choice(FACTS)
        subject = rng.choice(sorted(table))
        question = rng.choice(OPENERS) + rng.choice(questions).format(subject)
        prompt = f"\n\nHuman: {question}{ASSISTANT}"
        (chosen, chosen_right), (rejected, rejected_right) = (
            _reply(rng, answer, subject, table) for _ in range(2))
        if rejected_right > chosen_right or (chosen_right == rejected_right and
                                             rng.random() < 0.5):
            chosen, rejected = rejected, chosen
        rows.append({"chosen": f"{prompt} {chosen}", "rejected": f"{prompt} {rejected}"})
    return rows


def write_synthetic_dialogues(folder: str, seed: int = 0, sizes: dict | None = None) -> str:
    """The synthetic dialogues as a dataset folder in the hub layout (train-00000-of-00001.parquet,
    test-...), readable by --dataset FOLDER exactly as --dataset synthetic with the same seed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    for i, (split, n) in enumerate((sizes or SYNTHETIC_SIZES).items()):
        table = pa.Table.from_pylist(synthetic_dialogues(n, seed_for(seed, i)))
        atomic_write(os.path.join(folder, f"{split}-00000-of-00001.parquet"),
                     lambda tmp, table=table: pq.write_table(table, tmp))
    return folder


@functools.cache
def _questions() -> dict:
    """{question: correct answer sentence} of every question the grammar asks."""
    return {q.format(s): _sentence(answer, s, v) for questions, answer, table in FACTS
            for q in questions for s, v in table.items()}


def dialogue_reward(prompt: str, response: str) -> float:
    """The rule as a judge: 1.0 if the response states the correct answer to the prompt's
    (last) question, else 0.0."""
    question = re.split(r"(?<=[.!]) ", prompt.rsplit("Human: ", 1)[-1].removesuffix(ASSISTANT))
    answer = _questions().get(question[-1].strip())
    if answer is None:
        raise ValueError(f"not a synthetic dialogue prompt: {prompt[-80:]!r}")
    return float(answer in response)


def dialogue_vocab() -> list[int]:
    """Every GPT-2 id of every prompt and response the grammar can write (encoded apart, as
    convert does), plus EOS: the synthetic dialogues' compact vocabulary."""
    enc = gpt2_encoding()
    replies = []
    for _, answer, table in FACTS:
        replies += [p + _sentence(answer, s, v) for s in table for v in set(table.values())
                    for p in PREFIXES]
    texts = [f"\n\nHuman: {o}{q}{ASSISTANT}" for q in _questions() for o in OPENERS]
    texts += [" " + r for r in replies]
    return sorted({GPT2_EOS}.union(*enc.encode_ordinary_batch(texts)))
