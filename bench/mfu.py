"""Training efficiency on CPU: achieved training FLOP/s of our GPT-2 step as a fraction of this
machine's measured fp32 matmul FLOP/s (the practical peak).

FLOPs per token for a training step (Kaplan et al. 2020; PaLM App. B): 6 N for the weight
matmuls (forward 2N, backward 4N; N = non-embedding parameters + the tied output layer) plus
6 * 2 * n_layer * T * C for attention scores and values (12 L T C).

    python bench/mfu.py                            # GPT-2 124M dimensions, batch 4 x 128
    python bench/mfu.py --size tiny --vocab 512 --reps 2
"""

import argparse
import time

import torch
from common import add_size_args, interleaved, model_pair, setup_threads, table

from sft import lm_loss  # noqa: E402

from plumbing.speed import adamw  # noqa: E402


def matmul_flops(n=2048, reps=10) -> float:
    """fp32 FLOP/s of an n x n x n matmul, the best of reps (the machine's practical peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def train_flops_per_token(model, T: int) -> float:
    cfg = model.config
    return 6 * model.num_params() + 12 * cfg.n_layer * T * cfg.n_embd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_args(ap)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--matmul", type=int, default=2048, help="matmul size for the peak")
    args = ap.parse_args(argv)
    setup_threads(args)
    ours, ref = model_pair(args.size, args.vocab)
    ours.train(), ref.train()
    x = torch.randint(0, args.vocab, (args.batch, args.seq))
    mask = torch.ones_like(x, dtype=torch.bool)
    opt = adamw(ours.parameters(), 1e-5, "cpu")  # as the loops build it: fused
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-5)

    def step():
        lm_loss(ours, x, mask).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step_ref():
        ref(x, labels=x).loss.backward()
        opt_ref.step()
        opt_ref.zero_grad(set_to_none=True)

    peak = matmul_flops(args.matmul)
    t = interleaved({"ours": step, "transformers": step_ref}, args.reps)
    flops = train_flops_per_token(ours, args.seq) * args.batch * args.seq
    rows = [(k, f"{v * 1000:.0f}", f"{flops / v / 1e9:.1f}", f"{flops / v / peak:.0%}")
            for k, v in t.items()]
    table(rows, ("train step", "ms", "GFLOP/s", "of matmul peak"))
    print(f"fp32 matmul peak ({args.matmul}^3): {peak / 1e9:.1f} GFLOP/s")
    return dict(peak=peak, flops_per_step=flops, **t)


if __name__ == "__main__":
    main()
