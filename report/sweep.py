"""What each run of a sweep folder learned, beside where its KL ended:

    python -m report.sweep runs/tiny
"""

import json
import os
import sys

from evaluate import describe_run

from plumbing.utils import read_jsonl


def report(sweep_dir: str) -> list[dict]:
    """What each run of a sweep folder learned, beside where it landed: one row per run with its
    method and setting, the held-out pair accuracy of its last evaluation (the learned RM's, or
    the share of held-out pairs whose implicit rewards DPO and Unlikelihood order as the ground
    truth did: pairs.py labelled each pair by the ground truth), the steps it took of the most it
    could (fewer: early stopping ended it), its compute (tokens through the model with a backward
    pass, summed over its steps; and the prompt + completion tokens it sampled, forward only: PPO's
    rollouts, online DPO's pools), and from the results file the KL of its last two evaluated
    checkpoints (has the KL settled, and where?)."""
    results = read_jsonl(os.path.join(sweep_dir, "frontier.jsonl"))
    out = []
    for name in sorted(os.listdir(sweep_dir)):
        run = os.path.join(sweep_dir, name)
        log = os.path.join(run, "log.jsonl")
        if not os.path.isfile(os.path.join(run, "run_config.json")) or not os.path.isfile(log):
            continue
        rows = read_jsonl(log)
        with open(os.path.join(run, "run_config.json")) as f:
            cfg = json.load(f)
        evals = [r for r in rows if "loss/eval" in r or "eval/score" in r]
        acc = next((r.get("eval/rm/accuracy", r.get("eval/rewards/accuracy"))
                    for r in reversed(evals)), None)
        method, pname, pval = describe_run(run) if name not in ("rm", "gt") else (
            {"rm": "reward model", "gt": "ground truth"}[name], "", None)
        mine = sorted((r for r in results if r["checkpoint"].split("/")[0] == name
                       and r.get("best_of") is None and r["method"] != "SFT"),
                      key=lambda r: r["step"])
        if acc is None and not mine:
            continue  # pairs, the SFT model: nothing learned from preferences to report
        out.append(dict(run=name, method=method, param=pname, value=pval,
                        heldout_accuracy=acc,
                        loss_eval=evals[-1].get("loss/eval") if evals else None,
                        steps=rows[-1]["step"] if rows else 0, max_steps=cfg.get("steps"),
                        tokens=sum(r.get("tokens", 0) for r in rows) or None,
                        sampled=sum(r.get("tokens/sampled", 0) for r in rows) or None,
                        kl_last=mine[-1]["kl"] if mine else None,
                        kl_before=mine[-2]["kl"] if len(mine) > 1 else None))
    return out


def print_report(rows: list[dict]):
    fmt = lambda v: "" if v is None else f"{v:.3f}"
    mega = lambda v: f"{v / 1e6:.2f}M" if v else ""
    print(f"{'run':<24} {'held-out acc':>12} {'loss/eval':>10} {'steps (of)':>11} "
          f"{'tokens':>8} {'sampled':>8} {'KL (last two ckpts)':>20}")
    for r in rows:
        kl = f"{fmt(r['kl_before'])} -> {fmt(r['kl_last'])}" if r["kl_last"] is not None else ""
        steps = f"{r['steps']} ({r['max_steps']})" if r["max_steps"] else str(r["steps"])
        print(f"{r['run']:<24} {fmt(r['heldout_accuracy']):>12} {fmt(r['loss_eval']):>10} "
              f"{steps:>11} {mega(r['tokens']):>8} {mega(r.get('sampled')):>8} {kl:>20}")


def print_compute(rows: list[dict]):
    """Each method's compute per run, mean over its runs: tokens through the policy with a
    backward pass, and tokens it sampled (forward only). The offline methods also share the one
    pairs file's sampling (pairs.py), counted in no run."""
    print("compute per run, mean over the method's runs (M tokens):")
    print(f"  {'method':<14} {'runs':>5} {'forward+backward':>17} {'sampled':>9}")
    for method in sorted({r["method"] for r in rows} - {"reward model", "ground truth"}):
        mine = [r for r in rows if r["method"] == method]
        mean = lambda k, mine=mine: sum(r.get(k) or 0 for r in mine) / len(mine) / 1e6
        print(f"  {method:<14} {len(mine):>5} {mean('tokens'):>17.2f} {mean('sampled'):>9.2f}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m report.sweep", description="Print what each run "
                                 "of a sweep folder learned (held-out pair accuracy) and where its "
                                 "KL ended.")
    ap.add_argument("sweep", help="a sweep folder of frontier.py, e.g. runs/tiny")
    args = ap.parse_args()
    if not os.path.isfile(os.path.join(args.sweep, "frontier.jsonl")):
        sys.exit(f"error: {args.sweep} holds no frontier.jsonl (not a frontier.py sweep?)")
    rows = report(args.sweep)
    print_report(rows)
    print_compute(rows)
