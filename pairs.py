"""The preference dataset (App. C.1): for N prefixes of IMDb train reviews, sample 4 completions
from the SFT policy, score prefix + completion with the ground-truth sentiment classifier, and
write all 6 ordered pairs with both rewards and the exact sampled token ids.

Resumable: prefixes are processed in chunks of `chunk`, each with its own seeded generator, and
each chunk is a step of the run (its log row, then state.pt); a killed run drops the pairs of its
unfinished chunk and redoes it, so the file ends the same.

Tiny CPU run (after sft.py and reward.py's label classifier):
    python pairs.py --init runs/sft_tiny --ground_truth runs/gt_tiny --dataset synthetic \
        --n_prefixes 256 --out_dir runs/pairs_tiny
"""

import itertools
import os
from dataclasses import dataclass

import torch

from data import PROTOCOL, load_prefixes, load_tokenizer, pair_row
from model import GPT, gpt_folder, sample_completions
from reward import load_ground_truth

from plumbing.flags import arg
from plumbing.runs import Run, run_main
from plumbing.speed import speed_up
from plumbing.utils import append_jsonl, read_jsonl, seed_for, write_jsonl


@dataclass
class PairsConfig:
    out_dir: str = arg("runs/pairs", "run folder; the pairs are written to <out_dir>/pairs.jsonl")
    init: str = arg("runs/sft", "the SFT policy that samples the completions")
    ground_truth: str = arg("siebert/sentiment-roberta-large-english",
                            "see reward.load_ground_truth")
    dataset: str = arg("stanfordnlp/imdb", "prefixes come from its train split")
    n_prefixes: int = arg(25000, "the paper: 25,000 prefixes x 6 pairs = 150k pairs", "> 0")
    samples: int = arg(4, "completions per prefix (all pairs of them are written)", "> 0")
    chunk: int = arg(64, "prefixes per sampling batch, and per resumable unit", "> 0")
    score_batch: int = arg(64, "texts per ground-truth batch", "> 0")
    seed: int = arg(0, "which prefixes, and the sampling", ">= 0")
    device: str = arg("auto", "cuda > mps > cpu", "device")
    overwrite: bool = arg(False, "delete an existing run folder with another config")


def pairs_of(prefix, comps, rewards, tok):
    """All ordered pairs of one prefix's completions: (rows, number of exact ties dropped; two
    identical completions count as a tie even if batching noise scored them apart)."""
    rows, ties = [], 0
    for i, j in itertools.combinations(range(len(comps)), 2):
        if rewards[i] == rewards[j] or comps[i] == comps[j]:
            ties += 1
            continue
        w, lo = (i, j) if rewards[i] > rewards[j] else (j, i)
        rows.append(pair_row(prefix, comps[w], comps[lo], rewards[w], rewards[lo], tok))
    return rows, ties


def sample_pairs(policy, prefixes, samples, gen_batch, generator, tok, score):
    """`samples` completions of each prefix sampled from the policy (the paper's protocol), scored
    by score(prompts, completions) -> one reward each, and all ordered pairs of each prefix's.
    Returns (a list of pair rows per prefix, ties dropped, the rewards, tokens sampled). pairs.py
    scores with the ground truth; online/dpo.py calls it too, with the policy as it trains."""
    prompts = [p for p in prefixes for _ in range(samples)]  # each prefix `samples` times
    comps = sample_completions(policy, prompts, gen_batch, generator, tok.eos_id,
                               **PROTOCOL.sampling())
    rewards = score(prompts, comps)
    rows, ties = [], 0
    for k, prefix in enumerate(prefixes):
        s = slice(k * samples, (k + 1) * samples)
        r, t = pairs_of(prefix, comps[s], rewards[s], tok)
        rows, ties = rows + [r], ties + t
    return rows, ties, rewards, sum(map(len, prompts)) + sum(map(len, comps))


def main(cfg: PairsConfig):
    if cfg.samples < 2:
        raise ValueError("need at least 2 samples per prefix to make a pair")
    run = Run(cfg)  # (the lines on `run` are plumbing: plumbing/runs.py)
    if run.done:
        return run.history
    init, device = gpt_folder(cfg.init), run.device
    tok = load_tokenizer(init)
    prefixes = load_prefixes(cfg.dataset, "train", cfg.n_prefixes, cfg.seed, tok)
    policy = speed_up(GPT.from_pretrained(init)).to(device).eval()
    scorer = load_ground_truth(cfg.ground_truth, device=device)
    run.start()  # the inputs are good: now the run folder
    run.restore()
    path = os.path.join(cfg.out_dir, "pairs.jsonl")
    # pairs of a chunk after the last finished one are half-written: drop them
    write_jsonl(path, [r for r in read_jsonl(path) if r["prefix_index"] < run.step * cfg.chunk])

    score = lambda prompts, comps: scorer([tok.decode(p + c) for p, c in zip(prompts, comps)],
                                          batch_size=cfg.score_batch, progress=False).tolist()
    n_chunks = (len(prefixes) + cfg.chunk - 1) // cfg.chunk
    for n in run.steps(n_chunks, desc="pairs", unit="chunk"):  # chunk n: prefixes from `first`
        first = (n - 1) * cfg.chunk
        chunk = prefixes[first: first + cfg.chunk]
        g = torch.Generator(device=device).manual_seed(seed_for(cfg.seed, n - 1))
        rows, n_ties, rewards, n_tokens = sample_pairs(policy, chunk, cfg.samples,
                                                       len(chunk) * cfg.samples, g, tok, score)
        for k, prefix_rows in enumerate(rows):
            append_jsonl(path, *({"prefix_index": first + k, **r} for r in prefix_rows))
        run.log({"pairs": sum(map(len, rows)), "ties": n_ties,
                 "reward_mean": sum(rewards) / len(rewards),
                 "tokens_per_s": run.tokens_per_s(n_tokens)}, show=("reward_mean",))
        run.save()  # the chunk is complete: its pairs, its log row, then state.pt
    return run.finish()


if __name__ == "__main__":
    run_main(main, PairsConfig)
