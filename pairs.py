"""The preference dataset (App. C.1): for N prefixes of IMDb train reviews, sample 4 completions
from the SFT policy, score prefix + completion with the ground-truth sentiment classifier, and
write all 6 ordered pairs with both rewards and the exact sampled token ids.

Resumable: prefixes are processed in chunks of `chunk`, each with its own seeded generator; a
killed run drops the pairs of its unfinished chunk and redoes it, so the file ends the same.

Tiny CPU run (after sft.py and reward.py's label classifier):
    python pairs.py --init runs/sft_tiny --ground_truth runs/gt_tiny --dataset synthetic \
        --n_prefixes 256 --out_dir runs/pairs_tiny
"""

import itertools
import os
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from data import PROTOCOL, load_reviews, load_tokenizer, make_prefixes, pair_row
from model import GPT, completions
from reward import load_ground_truth
from utils import (
    append_jsonl, autocast, get_device, is_done, log_row, mark_done, open_run, read_jsonl,
    resolve_init, resume_log, run_main, start_run, write_jsonl,
)


@dataclass
class PairsConfig:
    out_dir: str = "runs/pairs"  # run folder; the pairs are written to <out_dir>/pairs.jsonl
    init: str = "runs/sft"  # the SFT policy that samples the completions
    ground_truth: str = "siebert/sentiment-roberta-large-english"  # see reward.load_ground_truth
    dataset: str = "stanfordnlp/imdb"  # prefixes come from its train split
    n_prefixes: int = 25000  # the paper: 25,000 prefixes x 6 pairs = 150k pairs
    samples: int = 4  # completions per prefix (all pairs of them are written)
    chunk: int = 64  # prefixes per sampling batch, and per resumable unit
    score_batch: int = 64  # texts per ground-truth batch
    seed: int = 0  # which prefixes, and the sampling
    device: str = "auto"  # cuda > mps > cpu
    overwrite: bool = False  # delete an existing run folder with another config


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


def main(cfg: PairsConfig):
    if cfg.samples < 2:
        raise ValueError("need at least 2 samples per prefix to make a pair")
    resuming = open_run(cfg)  # refuses another config; writes nothing yet
    path = os.path.join(cfg.out_dir, "pairs.jsonl")
    if resuming and is_done(cfg.out_dir):
        return read_jsonl(os.path.join(cfg.out_dir, "log.jsonl"))
    device = get_device(cfg.device)
    init = resolve_init(cfg.init)
    tok = load_tokenizer(init)
    texts = load_reviews(cfg.dataset, "train")[0]
    prefixes = make_prefixes(texts, cfg.n_prefixes, cfg.seed, tok)
    n_chunks = (len(prefixes) + cfg.chunk - 1) // cfg.chunk
    policy = GPT.from_pretrained(init).to(device).eval()
    scorer = load_ground_truth(cfg.ground_truth, device=device)
    start_run(cfg)  # the inputs are good: now the run folder

    # Resume: chunks with a log row are complete; pairs of a later chunk are half-written: drop.
    done_chunks, history = 0, []
    if resuming:
        history = read_jsonl(os.path.join(cfg.out_dir, "log.jsonl"))
        done_chunks = max((r["step"] for r in history), default=0)
        history = resume_log(cfg.out_dir, done_chunks)
        rows = read_jsonl(path)
        write_jsonl(path, [r for r in rows if r["prefix_index"] < done_chunks * cfg.chunk])
    pbar = tqdm(total=len(prefixes), initial=min(done_chunks * cfg.chunk, len(prefixes)),
                desc="pairs", unit="prefix", mininterval=1.0)
    for c in range(done_chunks, n_chunks):
        t0 = time.time()
        first = c * cfg.chunk
        chunk = prefixes[first: first + cfg.chunk]
        g = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + c)
        prompts = [p for p in chunk for _ in range(cfg.samples)]  # each prefix `samples` times
        with autocast(device):
            tokens, mask = policy.generate(prompts, generator=g, eos_id=tok.eos_id,
                                           **PROTOCOL.sampling())
        comps = completions(tokens, mask)
        rewards = scorer([tok.decode(p + c) for p, c in zip(prompts, comps)],
                         batch_size=cfg.score_batch, progress=False).tolist()
        n_pairs, n_ties = 0, 0
        for k, prefix in enumerate(chunk):
            s = slice(k * cfg.samples, (k + 1) * cfg.samples)
            rows, ties = pairs_of(prefix, comps[s], rewards[s], tok)
            append_jsonl(path, *({"prefix_index": first + k, **r} for r in rows))
            n_pairs, n_ties = n_pairs + len(rows), n_ties + ties
        # the log row marks the chunk complete: written after its pairs
        log_row(cfg.out_dir, {"step": c + 1, "pairs": n_pairs, "ties": n_ties,
                              "reward_mean": sum(rewards) / len(rewards),
                              "pairs_per_s": n_pairs / (time.time() - t0)}, history)
        pbar.update(len(chunk))
        pbar.set_postfix(pairs_per_s=f"{n_pairs / (time.time() - t0):.1f}", refresh=False)
    pbar.close()
    mark_done(cfg.out_dir)
    return history


if __name__ == "__main__":
    run_main(main, PairsConfig)
