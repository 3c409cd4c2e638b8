"""Text in, tokens out: the GPT-2 tokenizer, IMDb, prompts, the evaluation protocol, the
preference-pairs format and its collate; the synthetic corpus's compact vocabulary (its reviews:
synthetic/reviews.py).

    python data.py --dataset synthetic --n 3          # print a few reviews and their prefixes
    python data.py --dataset stanfordnlp/imdb --n 3   # the real thing (hub, or a local folder)
"""

import glob
import json
import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass

import torch

from plumbing.utils import hub_reachable, load_files, seed_for
from synthetic.reviews import SPLITS, synthetic_reviews, vocab_words

GPT2_EOS = 50256

# ----------------------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class Protocol:
    """How completions are sampled and measured: one setting for pair generation, PPO rollouts and
    evaluation. The paper (§6.1, App. C.1) gives the prefix lengths; the rest it leaves unstated,
    so we fix it here and say so in docs/presets.md."""

    min_prefix: int = 2  # prompt = the first 2..8 tokens of a review (paper)
    max_prefix: int = 8
    max_new_tokens: int = 48  # completion length cap; a completion also ends at EOS
    temperature: float = 1.0  # plain sampling, so the KL we measure is the KL of what was sampled
    top_k: int | None = None
    top_p: float | None = None
    n_test_prefixes: int = 512  # held-out IMDb test prefixes per evaluation (fewer in `tiny`)
    test_seed: int = 2023  # fixes which test prefixes, and their lengths

    def sampling(self) -> dict:
        """Keyword arguments for GPT.generate."""
        return dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                    top_k=self.top_k, top_p=self.top_p)


PROTOCOL = Protocol()

# ----------------------------------------------------------------------------- tokenizer


class Tokenizer:
    """GPT-2's byte-level BPE through tiktoken, optionally remapped to a compact vocabulary.

    A compact vocabulary lists the GPT-2 ids a small model uses (compact id = position in the
    list); tiktoken still does the tokenisation. One extra id at the end stands for any GPT-2 token
    outside the list (text re-encoded after decoding can merge differently). On CPU the 50257-way
    output layer dominates tiny models, hence the compact form for the tests and the tiny preset.
    """

    def __init__(self, vocab: list[int] | None = None):
        self.enc = gpt2_encoding()
        self.vocab = list(vocab) if vocab is not None else None
        if self.vocab is None:
            self.eos_id, self.vocab_size, self.unk_id = GPT2_EOS, self.enc.n_vocab, None
        else:
            if GPT2_EOS not in self.vocab:
                raise ValueError("a compact vocabulary must contain GPT-2's EOS (50256)")
            self.index = {g: i for i, g in enumerate(self.vocab)}
            self.eos_id, self.unk_id = self.index[GPT2_EOS], len(self.vocab)
            self.vocab_size = len(self.vocab) + 1

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in reviews are encoded as plain text."""
        ids = self.enc.encode_ordinary(text)
        if self.vocab is None:
            return ids
        return [self.index.get(i, self.unk_id) for i in ids]

    def decode(self, ids) -> str:
        """Text of `ids`, leaving out EOS (and the compact unknown id)."""
        ids = [int(i) for i in ids if int(i) != self.eos_id and int(i) != self.unk_id]
        if self.vocab is not None:
            ids = [self.vocab[i] for i in ids]
        return self.enc.decode(ids)

    def save(self, folder: str):
        """Write the compact vocabulary beside a checkpoint (nothing for full GPT-2)."""
        if self.vocab is not None:
            with open(os.path.join(folder, "compact_vocab.json"), "w") as f:
                json.dump(self.vocab, f)


GPT2_BPE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
GPT2_BPE_FILES = {  # file: the name tiktoken's cache gives it (the SHA-1 of its URL)
    "vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
    "encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
}


def gpt2_encoding():
    """tiktoken's GPT-2 BPE. Its two files (GPT2_BPE_FILES) download once, then tiktoken reads
    them from its cache folder; offline, put them there under their cache names."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests' connection errors, a corrupt cache, ...
        files = " and ".join(f"{f} (cached as {h})" for f, h in GPT2_BPE_FILES.items())
        raise OSError(f"tiktoken could not load GPT-2's BPE files ({type(e).__name__}): it "
                      f"downloads {files} once from {GPT2_BPE_URL}; offline, copy them under "
                      f"those names into a folder and set TIKTOKEN_CACHE_DIR to it") from None


def load_tokenizer(folder: str | None = None) -> Tokenizer:
    """A checkpoint folder's tokenizer: compact if it holds compact_vocab.json, else GPT-2's."""
    path = os.path.join(folder, "compact_vocab.json") if folder else None
    if path and os.path.isfile(path):
        with open(path) as f:
            return Tokenizer(json.load(f))
    return Tokenizer()


# ----------------------------------------------------------------------------- reviews


def clean_review(text: str) -> str:
    """IMDb reviews carry HTML line breaks; turn them and runs of whitespace into one space."""
    text = re.sub(r"<br\s*/?>", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def load_reviews(source: str, split: str) -> tuple[list[str], list[int]]:
    """Cleaned review texts and labels (1 = positive) of a split ("train" or "test").

    source: "synthetic" (the offline corpus below); a hub dataset name ("stanfordnlp/imdb");
    a local folder of parquet files in the hub layout (train-*.parquet, test-*.parquet, possibly
    under plain_text/); a single .parquet file; or a folder written by datasets' save_to_disk.
    """
    if source == "synthetic":
        reviews = synthetic_reviews(*SPLITS["train" if split == "train" else "test"])
        return [t for t, _ in reviews], [y for _, y in reviews]
    ds = _load_dataset(source, split)
    missing = [c for c in ("text", "label") if c not in ds.column_names]
    if missing:
        raise ValueError(f"dataset {source} ({split}) has columns {ds.column_names}; "
                         f"missing {', '.join(repr(c) for c in missing)}")
    return [clean_review(t) for t in ds["text"]], [int(y) for y in ds["label"]]


def _load_dataset(source: str, split: str):
    import datasets

    if os.path.isfile(source) and source.endswith(".parquet"):
        return load_files("parquet", [source])
    if os.path.isdir(source):
        if os.path.exists(os.path.join(source, "dataset_dict.json")):
            try:
                dd = datasets.load_from_disk(source)
            except Exception as e:  # a save_to_disk folder cut short, ...
                raise ValueError(f"could not read {source}: {type(e).__name__}: {e}") from None
            if split not in dd:
                raise FileNotFoundError(f"{source} has splits {list(dd)}, not {split!r}")
            return dd[split]
        files = sorted(glob.glob(os.path.join(source, "**", f"{split}-*.parquet"), recursive=True)
                       + glob.glob(os.path.join(source, "**", f"{split}.parquet"), recursive=True))
        if not files:
            raise FileNotFoundError(f"{source} has no {split}-*.parquet file (IMDb's hub layout)")
        return load_files("parquet", files)
    if not hub_reachable() and not os.environ.get("HF_HUB_OFFLINE"):  # fail now, not after retries
        raise OSError(f"could not load dataset '{source}': the Hugging Face hub is unreachable; "
                      f"pass a local folder of parquet files in the hub layout instead "
                      f"(--dataset), or set HF_HUB_OFFLINE=1 to use a copy in your datasets cache")
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as e:  # offline, unknown name, ...: one clear line
        raise OSError(f"could not load dataset '{source}' ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); pass a local folder of "
                      f"parquet files in the hub layout instead") from None


def make_prefixes(texts: list[str], n: int, seed: int, tok: Tokenizer,
                  protocol: Protocol = PROTOCOL) -> list[list[int]]:
    """The paper's prompts: the first 2..8 tokens (uniform) of n distinct reviews, chosen and cut
    deterministically for a seed."""
    if n > len(texts):
        raise ValueError(f"asked for {n} prefixes but the split has {len(texts)} reviews")
    rng = random.Random(seed)
    prefixes = []
    for i in rng.sample(range(len(texts)), len(texts)):  # a seeded order of all reviews
        length = rng.randint(protocol.min_prefix, protocol.max_prefix)
        ids = tok.encode(texts[i][:400])[:length]  # 400 characters hold 8 tokens with room to spare
        if ids:  # an empty review has no prefix: take the next one
            prefixes.append(ids)
        if len(prefixes) == n:
            return prefixes
    raise ValueError(f"asked for {n} prefixes but only {len(prefixes)} reviews are non-empty")


def load_prefixes(source: str, split: str, n: int, seed: int, tok: Tokenizer) -> list[list[int]]:
    """make_prefixes of a dataset's split (load_reviews): the prompts of pairs.py, ppo.py (train)
    and evaluate.py (test)."""
    return make_prefixes(load_reviews(source, split)[0], n, seed, tok)


def sft_sequences(texts: list[str], tok: Tokenizer, max_len: int) -> list[list[int]]:
    """Reviews as token sequences for next-token training: the review + EOS, cut to max_len."""
    return [(tok.encode(t) + [tok.eos_id])[:max_len] for t in texts]


def stream_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Example indices of the batch of step `step` (1, 2, ...) in an endless stream of shuffled
    epochs over n examples.

    The batch depends on (step, seed) alone, so resuming a run needs nothing but its step."""
    start = (step - 1) * batch_size
    out = []
    while len(out) < batch_size:
        epoch, pos = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed_for(seed, epoch)))
        out.extend(perm[pos: pos + batch_size - len(out)].tolist())
    return out


def held_out_sample(n_items: int, size: int) -> list[int]:
    """The indices of a fixed, seeded sample of `size` of a split's n_items (the hub's IMDb test
    split is sorted by label, so its first items would all be negative): the held-out set of the
    SFT and label-classifier losses."""
    return random.Random(0).sample(range(n_items), min(size, n_items))


# ----------------------------------------------------------------------------- collate


def collate(prompts: list[list[int]], completions: list[list[int]], pad_id: int):
    """Right-pad prompt + completion sequences for training or scoring.

    Returns input_ids (B, T) long and mask (B, T) bool, True exactly at the completion tokens, which
    is what model.token_logprobs scores. For language modelling of whole sequences pass empty
    prompts: the first token has no prediction, so it is never scored.
    """
    seqs = [p + c for p, c in zip(prompts, completions)]
    T = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, max(len(p), 1): len(s)] = True
    return input_ids, mask


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last True of each row of a (B, T) mask: where a sequence score sits."""
    return mask.long().cumsum(-1).argmax(-1)


# ----------------------------------------------------------------------------- pairs

PAIR_KEYS = ("prompt_ids", "chosen_ids", "rejected_ids", "prompt", "chosen", "rejected",
             "reward_chosen", "reward_rejected")


def pair_row(prompt_ids, chosen_ids, rejected_ids, reward_chosen, reward_rejected,
             tok: Tokenizer) -> dict:
    """One line of the pairs file. The ids are the exact sampled tokens (decoding and re-encoding
    does not always give them back, and DPO must score what the policy sampled); the texts are
    for reading."""
    return dict(prompt_ids=list(prompt_ids), chosen_ids=list(chosen_ids),
                rejected_ids=list(rejected_ids), prompt=tok.decode(prompt_ids),
                chosen=tok.decode(chosen_ids), rejected=tok.decode(rejected_ids),
                reward_chosen=None if reward_chosen is None else float(reward_chosen),
                reward_rejected=None if reward_rejected is None else float(reward_rejected))


def is_token_ids(v) -> bool:
    """Whether a value read from JSON is a list of token ids (non-negative ints, not bools)."""
    return isinstance(v, list) and all(type(i) is int and i >= 0 for i in v)


def check_pairs(rows: list[dict], path: str, block_size: int | None = None,
                vocab_size: int | None = None) -> list[dict]:
    """Validate rows read from a pairs file (utils.read_jsonl); a clear error names the line.
    With a model's block_size and vocab_size, also that every pair fits it."""
    if not rows:
        raise ValueError(f"{path}: no such file" if not os.path.isfile(path) else
                         f"{path} holds no pairs")
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: a pair is a JSON object, not {type(row).__name__}")
        missing = [k for k in PAIR_KEYS if k not in row]
        if missing:
            raise ValueError(f"{path}:{n}: pair lacks {', '.join(missing)}")
        for k in PAIR_KEYS:  # every field's type: ids, texts, rewards (null: no scalar reward)
            v, ok = row[k], True
            if k.endswith("_ids"):
                ok, want = is_token_ids(v), "a list of non-negative integer token ids"
            elif k.startswith("reward_"):
                ok = v is None or (type(v) in (int, float) and math.isfinite(v))
                want = "a finite number or null"
            else:
                ok, want = isinstance(v, str), "a string"
            if not ok:
                raise ValueError(f"{path}:{n}: {k} must be {want}, got {json.dumps(v)[:60]}")
        p, c, r = row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]
        if not p or not c or not r:
            raise ValueError(f"{path}:{n}: empty prompt or completion")
        length = len(p) + max(len(c), len(r))
        if block_size is not None and length > block_size:
            raise ValueError(f"{path}:{n}: prompt + completion is {length} tokens, longer than "
                             f"the model's context window of {block_size}")
        if vocab_size is not None and not all(0 <= i < vocab_size for i in (*p, *c, *r)):
            raise ValueError(f"{path}:{n}: a token id lies outside the model's vocabulary of "
                             f"{vocab_size} (a pairs file of another model?)")
    return rows


def split_pairs(rows, eval_size, seed):
    """(train, held-out) row indices: the pairs of a random, seeded choice of whole prompts are
    held out, about eval_size pairs, so no prompt is on both sides; one prompt at least is kept
    for training. The choice depends on the seed and the set of prompts only (not on the order of
    the file), and a smaller eval_size holds out a subset of a larger one's prompts. Callers pass
    a split seed fixed across a sweep (their cfg.split_seed), not the training seed, so that all
    runs on one pairs file are validated on the same pairs."""
    if eval_size <= 0:
        return list(range(len(rows))), []
    counts = Counter(tuple(r["prompt_ids"]) for r in rows)
    prompts = sorted(counts)  # a canonical order, then a seeded shuffle
    random.Random(seed).shuffle(prompts)
    held, n = set(), 0
    for p in prompts[: len(prompts) - 1]:  # keep one prompt for training
        if n >= eval_size:
            break
        held.add(p)
        n += counts[p]
    is_held = [tuple(r["prompt_ids"]) in held for r in rows]
    return ([i for i, h in enumerate(is_held) if not h], [i for i, h in enumerate(is_held) if h])


def check_held_out(rows, held: list[int], eval_size: int, seed: int, what: str):
    """Refuse a held-out set that leaves too little to train on: fewer training rows than held-out
    ones (the rule: --eval_size takes at most half of a file). The error names the largest
    --eval_size that passes (split_pairs is nested, so a binary search finds it)."""
    n = len(rows)
    if 2 * len(held) <= n:
        return
    lo, hi = 0, eval_size
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if 2 * len(split_pairs(rows, mid, seed)[1]) <= n else (lo, mid - 1)
    raise ValueError(f"--eval_size {eval_size} holds out {len(held)} of the {n} rows of {what} "
                     f"and leaves {n - len(held)} to train on, fewer than it holds out (it may "
                     f"take at most half): pass --eval_size {lo} or less, or 0 for none")


def collate_pairs(rows: list[dict], pad_id: int):
    """A batch of B pairs as one (2B, T) batch: chosen rows first, then rejected, so that one
    forward pass scores both. Returns input_ids (2B, T) and the completion mask (2B, T)."""
    prompts = [r["prompt_ids"] for r in rows]
    return collate(prompts + prompts, [r["chosen_ids"] for r in rows] +
                   [r["rejected_ids"] for r in rows], pad_id)


# ----------------------------------------------------------------------------- synthetic corpus
# The reviews themselves: synthetic/reviews.py.


def synthetic_vocab() -> list[int]:
    """Every GPT-2 id the synthetic corpus can use (its words alone, after a space, capitalised; no
    BPE merge crosses a space or a full stop), plus EOS: the tiny preset's compact vocabulary."""
    enc = gpt2_encoding()
    ids = {GPT2_EOS}
    for w in vocab_words():
        for form in (w, w.capitalize(), w.lower()):
            ids.update(enc.encode_ordinary(form))
            ids.update(enc.encode_ordinary(" " + form))
    for p in ".,!":
        ids.update(enc.encode_ordinary(p))
    return sorted(ids)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Print reviews of a dataset and their prompts.")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tok = Tokenizer(synthetic_vocab()) if args.dataset == "synthetic" else Tokenizer()
    texts, labels = load_reviews(args.dataset, args.split)
    for p in make_prefixes(texts, args.n, args.seed, tok):
        print(repr(tok.decode(p)))
    for t, y in list(zip(texts, labels))[: args.n]:
        print(y, t)
