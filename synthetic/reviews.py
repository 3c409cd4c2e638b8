"""Synthetic movie reviews: the offline corpus of the tiny preset and the tests (no download).

Reviews come from a small grammar of natural English. A review has a latent label; each of its
opinion sentences agrees with the label with probability 0.8, so reviews mix praise and complaint
and the same opening can continue either way. A small GPT trained on it samples continuations of
mixed sentiment that preference training can shift. data.load_reviews("synthetic", split) reads
it like IMDb; data.synthetic_vocab() is its compact vocabulary.

    python data.py --dataset synthetic --n 3          # a few reviews and their prefixes
"""

import random

SPLITS = {"train": (20000, 0), "test": (2000, 1)}  # split: (reviews, seed)

OPENERS = [
    "I watched this movie last night.", "I saw this film with my family on Sunday.",
    "My friend told me to watch this one.", "I rented this movie on a rainy weekend.",
    "This film came out a few years ago.", "I went to see this movie at the cinema.",
    "I had heard a lot about this film before I saw it.",
    "The film is about a young man who moves to a big city.",
    "The movie tells the story of two sisters in a small town.",
    "This is the third film by the director.", "We watched this movie at home.",
    "The story follows an old detective and his last case.",
]
SUBJECTS = [
    "the acting", "the plot", "the story", "the script", "the music", "the soundtrack",
    "the ending", "the cast", "the dialogue", "the direction", "the pacing", "the characters",
    "the camera work", "the humor", "the lead actor", "the lead actress", "the villain",
    "the special effects", "this film", "this movie", "the first half", "the second half",
]
VERBS = ["was", "felt", "seemed"]
INTENSIFIERS = ["", "really", "truly", "quite", "very", "so", "simply", "absolutely"]
POSITIVE = [
    "wonderful", "brilliant", "great", "beautiful", "moving", "excellent", "charming",
    "delightful", "superb", "clever", "funny", "touching", "fantastic", "gripping", "perfect",
    "memorable", "lovely", "stunning",
]
NEGATIVE = [
    "terrible", "boring", "awful", "dull", "weak", "bad", "painful", "silly", "poor", "messy",
    "predictable", "tedious", "flat", "clumsy", "forgettable", "annoying", "horrible", "lazy",
]
LIKE = {1: ["loved", "enjoyed", "adored", "liked"], 0: ["hated", "disliked", "regretted"]}
RECOMMEND = {1: "would recommend it to", 0: "would not recommend it to"}
AUDIENCE = ["my friends", "anyone", "my family", "everyone"]
VERDICT = {1: "one of the best", 0: "one of the worst"}
WHEN = ["this year", "in years", "in a long time"]
CLOSERS = ["Overall", "In the end", "Honestly", "All in all"]


def _opinion(rng: random.Random, s: int) -> str:
    """One sentence of sentiment s (1 positive, 0 negative)."""
    adj = rng.choice(POSITIVE if s else NEGATIVE)
    kind = rng.random()
    if kind < 0.55:
        words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(INTENSIFIERS), adj]
        text = " ".join(w for w in words if w)
    elif kind < 0.7:
        text = f"I {rng.choice(LIKE[s])} {rng.choice(SUBJECTS)}"
    elif kind < 0.8:
        text = f"I {RECOMMEND[s]} {rng.choice(AUDIENCE)}"
    elif kind < 0.9:
        text = f"It is {VERDICT[s]} movies I have seen {rng.choice(WHEN)}"
    else:
        text = f"{rng.choice(CLOSERS)}, it was {adj}"
    return text[0].upper() + text[1:] + "."


def synthetic_reviews(n: int, seed: int, p_agree: float = 0.8) -> list[tuple[str, int]]:
    """n (text, label) reviews, deterministic for a seed; labels balanced in expectation."""
    rng = random.Random(seed)
    reviews = []
    for _ in range(n):
        label = rng.randint(0, 1)
        sentences = [rng.choice(OPENERS)] if rng.random() < 0.7 else []
        for _ in range(rng.randint(3, 6)):
            s = label if rng.random() < p_agree else 1 - label
            sentences.append(_opinion(rng, s))
        reviews.append((" ".join(sentences), label))
    return reviews


def vocab_words() -> set[str]:
    """Every word the grammar writes (no punctuation): what its compact vocabulary must cover."""
    pieces = OPENERS + SUBJECTS + VERBS + INTENSIFIERS + POSITIVE + NEGATIVE + AUDIENCE + WHEN
    pieces += CLOSERS + [*LIKE[0], *LIKE[1], *RECOMMEND.values(), *VERDICT.values(), "I It is"]
    pieces += ["movies I have seen", "it was"]
    return {w.strip(".,") for p in pieces for w in p.split()}
