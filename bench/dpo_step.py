"""One DPO step on CPU: our loop's way (one forward over the concatenated chosen + rejected batch,
reference log-probs read from the cache) against the naive way (four forwards: policy and
reference on chosen and on rejected). Same loss required.

    python bench/dpo_step.py                       # GPT-2 124M dimensions, 4 pairs of ~64 tokens
    python bench/dpo_step.py --size tiny --vocab 512 --reps 2
"""

import argparse

import torch
from common import add_size_args, interleaved, model_pair, setup_threads, table

from data import collate  # noqa: E402
from dpo import concatenated_logps, preference_loss  # noqa: E402
from model import token_logprobs  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_args(ap)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--prompt_len", type=int, default=8)
    ap.add_argument("--completion_len", type=int, default=56)
    args = ap.parse_args(argv)
    setup_threads(args)
    # same seed, same weights: a policy for each contender (each takes optimizer steps) and a ref
    policy, _ = model_pair(args.size, args.vocab)
    policy_naive, _ = model_pair(args.size, args.vocab)
    ref, _ = model_pair(args.size, args.vocab)
    ref.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(0, args.vocab - 1, (n,), generator=g).tolist()
    rows = [dict(prompt_ids=ids(args.prompt_len), chosen_ids=ids(args.completion_len - i),
                 rejected_ids=ids(args.completion_len - 2 * i)) for i in range(args.pairs)]
    pad = args.vocab - 1
    with torch.no_grad():
        ref_c, ref_r = concatenated_logps(ref, rows, pad)  # the cache the loop reads
    opt = torch.optim.RMSprop(policy.parameters(), lr=1e-6)
    opt_naive = torch.optim.RMSprop(policy_naive.parameters(), lr=1e-6)
    losses = {}

    def ours():
        pc, pr = concatenated_logps(policy, rows, pad)
        loss = preference_loss(pc, pr, ref_c, ref_r, 0.1)[0].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses["ours"] = loss.item()

    def seq_logps(model, key):
        x, m = collate([r["prompt_ids"] for r in rows], [r[key] for r in rows], pad)
        return token_logprobs(model(x), x, m)

    def naive():
        pc, pr = seq_logps(policy_naive, "chosen_ids"), seq_logps(policy_naive, "rejected_ids")
        with torch.no_grad():
            rc, rr = seq_logps(ref, "chosen_ids"), seq_logps(ref, "rejected_ids")
        loss = preference_loss(pc, pr, rc, rr, 0.1)[0].mean()
        loss.backward()
        opt_naive.step()
        opt_naive.zero_grad(set_to_none=True)
        losses["naive"] = loss.item()

    # the loss agrees before any step is taken
    with torch.no_grad():
        pc, pr = concatenated_logps(policy, rows, pad)
        l0 = preference_loss(pc, pr, ref_c, ref_r, 0.1)[0].mean().item()
        l1 = preference_loss(seq_logps(policy, "chosen_ids"), seq_logps(policy, "rejected_ids"),
                             seq_logps(ref, "chosen_ids"), seq_logps(ref, "rejected_ids"),
                             0.1)[0].mean().item()
    assert abs(l0 - l1) < 1e-5, (l0, l1)
    t = interleaved({"concatenated + cached ref": ours, "naive (4 forwards)": naive}, args.reps)
    base = t["naive (4 forwards)"]
    table([(k, f"{v * 1000:.0f}", f"{v / base:.2f}") for k, v in t.items()],
          ("DPO step", "ms", "x naive"))
    return dict(loss_concat=l0, loss_naive=l1, **t)


if __name__ == "__main__":
    main()
