"""Training step on CPU, fp32: forward + backward + AdamW, ours against transformers'
GPT2LMHeadModel with the same weights (GPT-2 124M dimensions, batch 4 x 128 by default).

    python bench/train_step.py                 # GPT-2 124M, batch 4 x 128
    python bench/train_step.py --size tiny --vocab 512 --reps 2   # seconds (the test runs this)
"""

import argparse

import torch
from common import add_size_args, interleaved, model_pair, setup_threads, table

from sft import lm_loss  # noqa: E402  (common.py put the repo root on sys.path)

from plumbing.speed import adamw  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_args(ap)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--fused_ref", action="store_true", help="fused AdamW for transformers too")
    args = ap.parse_args(argv)
    setup_threads(args)
    ours, ref = model_pair(args.size, args.vocab)
    ours.train(), ref.train()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g)
    mask = torch.ones_like(x, dtype=torch.bool)
    opt_ours = adamw(ours.parameters(), 1e-5, "cpu")  # as the loops build it: fused
    # the reference as users run it: the default AdamW (--fused_ref: fused too, to compare the
    # models alone)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-5, fused=args.fused_ref)

    # the same loss on the same weights first: mean next-token NLL
    with torch.no_grad():
        l_ours, l_ref = lm_loss(ours, x, mask).item(), ref(x, labels=x).loss.item()
    assert abs(l_ours - l_ref) < 1e-4, (l_ours, l_ref)

    def step_ours():
        loss = lm_loss(ours, x, mask)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_ref():
        loss = ref(x, labels=x).loss
        loss.backward()
        opt_ref.step()
        opt_ref.zero_grad(set_to_none=True)

    t = interleaved({"ours": step_ours, "transformers": step_ref}, args.reps)
    tokens = args.batch * args.seq
    table([(k, f"{v * 1000:.0f}", f"{tokens / v:.0f}", f"{v / t['transformers']:.2f}")
           for k, v in t.items()], ("train step", "ms", "tokens/s", "x transformers"))
    return dict(loss_ours=l_ours, loss_ref=l_ref, **t)


if __name__ == "__main__":
    main()
