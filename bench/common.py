"""Shared by the benches: the same random GPT-2 weights in our model and in transformers', and a
timer that interleaves the contenders so that machine noise hits both alike."""

import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model import GPT  # noqa: E402

from plumbing.speed import speed_up  # noqa: E402  (the fast paths, as every script applies them)

SIZES = {  # name: (n_layer, n_head, n_embd)
    "tiny": (2, 2, 64),
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
}


def add_size_args(ap, size="gpt2"):
    ap.add_argument("--size", default=size, choices=list(SIZES))
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--reps", type=int, default=5)


def setup_threads(args):
    if args.threads:
        torch.set_num_threads(args.threads)


def model_pair(size: str, vocab: int, block_size: int = 1024, seed: int = 0):
    """(ours, transformers') with the same random weights, eval mode, dropout off."""
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_head, n_embd = SIZES[size]
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=block_size, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     eos_token_id=vocab - 1, bos_token_id=vocab - 1)
    ref = GPT2LMHeadModel(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = speed_up(GPT.from_pretrained(d)).eval()
    return ours, ref


def interleaved(fns: dict, reps: int, warmup: int = 1) -> dict:
    """Median seconds per call of each function, calls interleaved round-robin."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def table(rows: list[tuple], header: tuple):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))
    print(line(header))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))
