"""Sampling on CPU: 64 new tokens, batch 8, greedy, same weights: ours (KV cache) against
transformers' generate (identical tokens required), and ours without the cache.

    python bench/sample.py                         # GPT-2 124M dimensions
    python bench/sample.py --size tiny --vocab 512 --reps 2
    python bench/sample.py --linear     # also F.linear's x @ W.T against speed.Linear
"""

import argparse

import torch
from common import add_size_args, interleaved, model_pair, setup_threads, table


@torch.no_grad()
def greedy_uncached(model, prompt, n):
    """The textbook loop: the whole sequence through the model for every new token."""
    x = prompt
    for _ in range(n):
        x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], 1)
    return x[:, prompt.size(1):]


def linear_forms(model, rows, reps):
    """One token step's matmuls (every layer's four weights and the output layer, in order, so
    the weights stream from memory as in sampling): F.linear's x @ W.T against speed.Linear,
    which multiplies W @ x.T for at most 32 rows."""
    import torch.nn.functional as F

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = {n: torch.randn(rows, n) for n in {m.in_features for m in layers}}

    def f_linear():
        for m in layers:
            F.linear(xs[m.in_features], m.weight, m.bias)

    def model_linear():
        for m in layers:
            m(xs[m.in_features])

    with torch.no_grad():
        t = interleaved({"F.linear: x @ W.T": f_linear, "speed.Linear": model_linear}, reps)
    base = t["F.linear: x @ W.T"]
    table([(k, f"{v * 1000:.1f}", f"{v / base:.2f}") for k, v in t.items()],
          (f"weights of one step, {rows} rows", "ms", "x F.linear"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_size_args(ap)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt_len", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--no_uncached", action="store_true", help="skip ours without the cache")
    ap.add_argument("--linear", action="store_true",
                    help="also time the two ways to multiply a step's few rows by the weights")
    args = ap.parse_args(argv)
    setup_threads(args)
    ours, ref = model_pair(args.size, args.vocab)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, args.vocab - 1, (args.batch, args.prompt_len), generator=g)
    never = -1  # no EOS: every row runs all args.new steps on both sides
    out = {}

    def run_ours():
        out["ours"] = ours.generate(prompt.tolist(), args.new, temperature=0, eos_id=never)[0]

    def run_ref():
        with torch.no_grad():
            o = ref.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=args.new, min_new_tokens=args.new,
                             pad_token_id=args.vocab - 1, eos_token_id=None)
        out["transformers"] = o[:, args.prompt_len:]

    def run_uncached():
        out["uncached"] = greedy_uncached(ours, prompt, args.new)

    fns = {"ours (KV cache)": run_ours, "transformers generate": run_ref}
    if not args.no_uncached:
        fns["ours, no cache"] = run_uncached
    t = interleaved(fns, args.reps)
    same = torch.equal(out["ours"], out["transformers"])
    if not args.no_uncached:
        same = same and torch.equal(out["ours"], out["uncached"])
    base = t["transformers generate"]
    table([(k, f"{v * 1000:.0f}", f"{v * 1000 / args.new:.1f}", f"{v / base:.2f}")
           for k, v in t.items()], ("greedy sampling", "ms", "ms/token", "x transformers"))
    print(f"identical tokens: {same}")
    assert same, "ours and transformers' greedy tokens differ"
    if args.linear:
        linear_forms(ours, args.batch, args.reps)
    return dict(identical=same, **t)


if __name__ == "__main__":
    main()
