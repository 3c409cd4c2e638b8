"""The fixed costs of a sweep, measured at a GPU preset's shapes on random weights (the rehearsal's
inputs, plumbing/rehearse.py): what one live evaluation of a checkpoint costs when it loads the
reference, the ground truth and the test prefixes itself (as every evaluation did before) and when
it reuses them (evaluate.main's `shared`, one per sweep run, as frontier.py now passes it), and
the parts: loading GPT-2, loading the RoBERTa-large ground truth, reading and cleaning the test
split for its prefixes, writing a checkpoint. The two ways alternate, checkpoint by checkpoint.

    python bench/eval_cost.py --size gpt2 --checkpoints 3      # ~ 5 min on 2 CPU cores
"""

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate  # noqa: E402
from data import load_prefixes, load_tokenizer  # noqa: E402
from evaluate import EvalConfig  # noqa: E402
from model import GPT  # noqa: E402
from reward import load_ground_truth  # noqa: E402

from plumbing import rehearse  # noqa: E402
from plumbing.utils import write_folder  # noqa: E402


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="gpt2", choices=list(rehearse.GPT2_SIZES))
    ap.add_argument("--checkpoints", type=int, default=3, help="evaluations each way")
    ap.add_argument("--n_prefixes", type=int, default=64, help="test prefixes per evaluation")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", default=None, help="where the inputs go (default: a temp folder, "
                    "deleted after); an existing rehearsal's folder is reused")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or tmp
        rehearse.write_inputs(root, args.size)
        paths = rehearse.inputs(root)
        ref = paths["base_model"]
        parts = {}
        parts["load GPT-2 (reference)"], model = timed(GPT.from_pretrained, ref)
        ckpts = []
        for k in range(args.checkpoints):  # checkpoints to evaluate: the reference's weights
            path = os.path.join(root, "run", f"step_{k + 1:06d}")
            t, _ = timed(write_folder, path, model.save_pretrained)
            parts.setdefault("write a checkpoint", t)
            ckpts.append(path)
        parts["load the ground truth"], _ = timed(load_ground_truth, paths["ground_truth"])
        tok = load_tokenizer(ref)
        parts["read the test split, make prefixes"], _ = timed(
            load_prefixes, paths["dataset"], "test", args.n_prefixes, 0, tok)
        cfg = EvalConfig(ref=ref, ground_truth=paths["ground_truth"], dataset=paths["dataset"],
                         n_prefixes=args.n_prefixes, micro_batch=args.n_prefixes,
                         include_ref=False, plot=False, device=args.device)
        alone, shared_t, shared = [], [], {}
        for path in ckpts:  # alternating: the old way, then the new
            t, _ = timed(evaluate.main, dataclasses.replace(
                cfg, runs=(path,), out=os.path.join(root, "alone.jsonl")))
            alone.append(t)
            t, _ = timed(evaluate.main, dataclasses.replace(
                cfg, runs=(path,), out=os.path.join(root, "shared.jsonl")), shared)
            shared_t.append(t)
    print(f"{args.size}, {args.n_prefixes} test prefixes, device {args.device}; seconds:")
    for name, t in parts.items():
        print(f"  {name:<40}{t:8.2f}")
    print(f"  {'evaluation, loading its own (each)':<40}"
          + " ".join(f"{t:8.2f}" for t in alone))
    print(f"  {'evaluation, shared (first loads)':<40}"
          + " ".join(f"{t:8.2f}" for t in shared_t))
    later = shared_t[1:] or shared_t
    print(f"per checkpoint after the first: {statistics.median(alone[1:] or alone):.2f} s -> "
          f"{statistics.median(later):.2f} s "
          f"({statistics.median(later) / statistics.median(alone[1:] or alone):.2f}x)")


if __name__ == "__main__":
    main()
