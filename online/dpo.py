"""Online DPO: dpo.py's loss on pairs sampled from the current policy, refreshed every k steps.

Offline DPO (dpo.py) trains on a fixed pairs file sampled once from the SFT model. Here, every
`refresh_every` steps, the policy as it is now samples `samples` completions for each of
`pool_prompts` training prompts; a reward labels them (the learned reward model that PPO
optimises, or the ground truth, as PPO-GT uses), and all their ordered pairs (pairs.pairs_of)
become the pool the next k steps draw their batches from. The loss, the batch, the optimizer and
the step are dpo.py's own (dpo.train_step); the reference log-probs of each pool are computed by
the frozen reference held in memory. With refresh_every 0 the first pool is never replaced, and
the run is offline DPO on that pool (the test checks it step for step).

The held-out set is the offline pairs file's (--pairs, the same split as dpo.py's), so the early
stopping rule (--patience on its loss) is offline DPO's.

    python -m online.dpo --init runs/tiny/sft --pairs runs/tiny/pairs/pairs.jsonl \
        --reward rm --rm runs/tiny/rm --dataset synthetic --out_dir runs/online_dpo --steps 100
"""

import json
import os
from dataclasses import dataclass

import torch

from data import check_pairs, load_prefixes, load_tokenizer, split_pairs, stream_indices
from dpo import (
    DPOConfig,
    check_config,
    evaluate_pairs,
    optimizer,
    reference_logps,
    sequence_logps,
    train_step,
)
from model import GPT, gpt_folder
from pairs import sample_pairs
from ppo import load_scorer, score_rollouts

from plumbing.flags import arg
from plumbing.runs import Run, run_main
from plumbing.speed import speed_up
from plumbing.utils import atomic_write_json, read_jsonl, seed_for, write_jsonl


@dataclass
class OnlineDPOConfig(DPOConfig):
    out_dir: str = arg("runs/online_dpo", "run folder")
    pairs: str = arg("runs/pairs/pairs.jsonl", "the offline pairs file: its held-out split only")
    steps: int = arg(1000, "optimizer steps", "> 0")
    reward: str = arg("rm", "what labels the fresh pairs: rm (learned reward model) | gt")
    rm: str = arg("runs/rm", "the learned reward model (--reward rm)")
    ground_truth: str = arg("siebert/sentiment-roberta-large-english",
                            "the ground truth (--reward gt); see reward.load_ground_truth")
    dataset: str = arg("stanfordnlp/imdb", "prompts come from its train split")
    n_prompts: int = arg(25000, "training prompts the pools are drawn from", "> 0")
    refresh_every: int = arg(10, "steps between fresh pools; 0: the first pool only", ">= 0")
    pool_prompts: int = arg(64, "prompts per pool (each gives up to samples*(samples-1)/2 pairs)",
                            "> 0")
    samples: int = arg(4, "completions per prompt, as pairs.py", "> 0")
    gen_batch: int = arg(256, "sequences per generate() call", "> 0")
    score_batch: int = arg(64, "texts per scorer batch", "> 0")


def pool_start(cfg, step: int) -> int:
    """The first step of the pool that step `step` trains on."""
    return 1 + ((step - 1) // cfg.refresh_every * cfg.refresh_every if cfg.refresh_every else 0)


def fresh_pool(cfg, policy, scorer, tok, prompts, first: int, device) -> tuple[list, dict]:
    """The pool of pairs that the steps from `first` on train with: pool_prompts prompts (the
    stream of shuffled epochs over the training prompts), `samples` completions each from the
    policy as it is now, labelled by the scorer; all their ordered pairs, ties dropped (pairs.py's
    sample_pairs). Returns (pairs, the log's statistics of the pool)."""
    n = (first - 1) // cfg.refresh_every + 1 if cfg.refresh_every else 1  # the n-th pool
    chunk = [prompts[i] for i in stream_indices(len(prompts), cfg.pool_prompts, n, cfg.seed)]
    g = torch.Generator(device=device).manual_seed(seed_for(cfg.seed, first - 1))
    score = lambda ps, cs: score_rollouts(cfg, scorer, tok, ps, cs).tolist()
    policy.eval()
    rows, _, scores, n_tokens = sample_pairs(policy, chunk, cfg.samples, cfg.gen_batch, g, tok,
                                             score)
    policy.train()
    pool = [dict(r, first_step=first) for prefix_rows in rows for r in prefix_rows]
    if not pool:
        raise ValueError(f"step {first}: every pair of the fresh pool was a tie")
    # sampled by the policy: prompt + completion tokens, forward only (no backward)
    return pool, {"pool/pairs": len(pool), "pool/score": sum(scores) / len(scores),
                  "tokens/sampled": n_tokens}


def main(cfg: OnlineDPOConfig, on_checkpoint=None):
    """Train; returns the log's rows. on_checkpoint(run folder): called after each checkpoint."""
    run = Run(cfg)  # (the lines on `run` are plumbing: plumbing/runs.py)
    check_config(cfg)
    if cfg.reward not in ("rm", "gt"):
        raise ValueError(f"--reward must be rm or gt, not {cfg.reward!r}")
    if run.done:
        return run.history
    run.micro_batches(cfg.batch_size, cfg.micro_batch)  # the batch splits evenly, or an error
    init, device = gpt_folder(cfg.init), run.device
    tok = load_tokenizer(init)
    model = speed_up(GPT.from_pretrained(run.resume_from or init)).to(device).train()
    ref_path = gpt_folder(cfg.ref or cfg.init)
    ref = speed_up(GPT.from_pretrained(ref_path)).to(device).eval().requires_grad_(False)
    scorer = load_scorer(cfg, tok, device)  # the learned RM or the ground truth, as PPO's
    # held out: the offline pairs file's split, so validation and early stopping are dpo.py's
    rows = check_pairs(read_jsonl(cfg.pairs), cfg.pairs, model.config.block_size,
                       model.config.vocab_size)
    _, eval_idx = split_pairs(rows, cfg.eval_size, cfg.split_seed)
    # the pools' prompts: training prompts, never one of the held-out pairs' prompts
    held = {tuple(rows[i]["prompt_ids"]) for i in eval_idx}
    prompts = [p for p in load_prefixes(cfg.dataset, "train", cfg.n_prompts, cfg.seed, tok)
               if tuple(p) not in held]
    if not prompts:
        raise ValueError(f"--n_prompts {cfg.n_prompts}: every prompt is held out in {cfg.pairs}")
    run.start()  # the inputs are good: now the run folder
    ref_c, ref_r = reference_logps(ref_path, cfg.pairs, rows, tok.eos_id, device, cfg.micro_batch)
    evaluate = lambda: evaluate_pairs(cfg, model, rows, eval_idx, ref_c, ref_r, tok.eos_id)
    opt = optimizer(cfg, model, device)
    if not run.restore(opt) and eval_idx:
        run.log(evaluate())  # step 0: policy = reference
    if eval_idx:
        run.stop_when_stalled("loss/eval", cfg.patience)
    pools, pool, first = os.path.join(cfg.out_dir, "pools"), None, None
    os.makedirs(pools, exist_ok=True)

    for step in run.steps(cfg.steps, desc=f"online {cfg.loss} {os.path.basename(cfg.out_dir)}"):
        row = {}
        if pool is None or pool_start(cfg, step) != first:  # a fresh pool (or the one resumed)
            first = pool_start(cfg, step)
            path = os.path.join(pools, f"step_{first:06d}")
            pool = read_jsonl(path + ".jsonl")  # written before a kill: the same pool again
            if pool:
                with open(path + ".json") as f:
                    stats = json.load(f)
            else:
                pool, stats = fresh_pool(cfg, model, scorer, tok, prompts, first, device)
                atomic_write_json(path + ".json", stats)  # first the statistics, then the pool
                write_jsonl(path + ".jsonl", pool)  # atomically
            if step == first:  # logged at the pool's first step (again, if that row was lost)
                row.update(stats)
            # older pools: no resume can need them (it starts after the last checkpoint)
            for name in os.listdir(pools):
                if name < f"step_{pool_start(cfg, run.saved + 1):06d}":
                    os.remove(os.path.join(pools, name))
            pool_c, pool_r = sequence_logps(ref, pool, tok.eos_id, cfg.micro_batch, progress=False)
        batch = stream_indices(len(pool), cfg.batch_size, step - first + 1, cfg.seed)
        row.update(train_step(cfg, run, model, opt, pool, batch, pool_c, pool_r, tok.eos_id))
        if eval_idx and run.due(cfg.eval_every):
            row.update(evaluate())
        run.log(row, show=("loss/train", "rewards/accuracy"))
        if run.due(cfg.save_every):
            run.save(opt, model, tok)
            if on_checkpoint:
                on_checkpoint(run.dir)
    return run.finish()


if __name__ == "__main__":
    run_main(main, OnlineDPOConfig)
