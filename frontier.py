"""The whole IMDb experiment in one command: SFT -> ground truth -> pairs -> reward model -> DPO,
Unlikelihood, Preferred-FT, PPO and PPO-GT sweeps -> best-of-N -> evaluation -> frontier.png.
--losses adds IPO, conservative DPO, SLiC-hinge and SimPO over DPO's betas (VARIANTS, below);
--online adds online DPO, labelled by the learned RM and by the ground truth (online/dpo.py).

Every step calls a script's main(cfg) and writes its own run folder under runs/<preset>/; a
folder with its `done` marker is skipped, and an unfinished one resumes, so an interrupted sweep
continues where it stopped. On the CPU the tiny preset trains its sweep runs side by side, a
worker process each (--jobs, below); otherwise every step runs in this process.

    python frontier.py --preset tiny     # CPU, offline: the synthetic corpus, minutes
    python frontier.py --preset gpt2     # GPT-2 124M on IMDb, one GPU
    python frontier.py --preset paper    # gpt2-large on IMDb, the paper's sweep
    python frontier.py --preset paper --plan   # steps, checkpoints, disk, time: runs nothing
    python frontier.py --preset gpt2 --rehearse   # every stage at its real shapes, 2 steps each

Each checkpoint of a sweep run (DPO, Unlikelihood, Preferred-FT, PPO, PPO-GT) is evaluated into
frontier.jsonl as soon as it is written, in the training process (run_step passes its main an
on_checkpoint), and the evaluated ones before it are deleted: a run in training holds the one it
resumes from. When a run
is done, its last checkpoint stays (--keep_last, the tiny preset's default) or goes too
(--no-keep_last, the GPU presets' default: their rows stay). The state.pt of every finished run
goes (a finished run never resumes), and so do the step checkpoints of the finished reward model
and label classifier (later stages read their best/). --keep_checkpoints keeps everything and
evaluates each run when it is done. A checkpoint is deleted only once its row is in
frontier.jsonl, so a kill at any moment resumes with nothing evaluated twice and nothing lost
(that bookkeeping is plumbing/prune.py's).
"""

import dataclasses
import os
import time
from dataclasses import dataclass

from dpo import DPOConfig
from dpo import main as dpo_main
from evaluate import EvalConfig
from evaluate import main as evaluate_main
from pairs import PairsConfig
from pairs import main as pairs_main
from ppo import PPOConfig
from ppo import main as ppo_main
from reward import RMConfig
from reward import train as rm_train
from sft import SFTConfig
from sft import main as sft_main

from online.dpo import OnlineDPOConfig
from online.dpo import main as online_dpo_main
from plumbing import rehearse
from plumbing.flags import arg, check_fields
from plumbing.plan import print_plan
from plumbing.presets import PRESETS, keeps_last, n_jobs
from plumbing.prune import evaluate_live, evaluate_run, prune
from plumbing.runs import is_done, open_run, run_main, stopped
from plumbing.utils import list_checkpoints, read_jsonl
from plumbing.workers import cpu_cores, run_in_workers
from report.figure import print_budget_table
from theory.optimum import OptimumConfig
from theory.optimum import main as optimum_main


@dataclass
class FrontierConfig:
    preset: str = arg("tiny", "tiny | gpt2 | paper")
    out_dir: str | None = arg(None, "default runs/<preset>")
    device: str = arg("auto", "cuda > mps > cpu", "device")
    base_model: str | None = arg(None,
                                 "override the preset's base model (e.g. a local GPT-2 folder)")
    dataset: str | None = arg(None, "override the preset's dataset (e.g. a local IMDb folder)")
    ground_truth: str | None = arg(None,
                                   "override the preset's ground truth (e.g. a local siebert)")
    keep_checkpoints: bool = arg(False, "keep every checkpoint and state.pt of every run")
    keep_last: bool | None = arg(None, "keep each sweep run's last checkpoint; None: the preset's "
                                 "choice (tiny: keep; gpt2, paper: its rows only, for disk)")
    plan: bool = arg(False,
                     "print each step's counts, checkpoints, disk and time estimate; run nothing")
    seeds: int = arg(
        1, "every trained method repeated with seeds 0 .. K-1 (the plot: mean and band)", "> 0")
    jobs: int = arg(
        0, "sweep runs trained at once, a process each; 0: the preset's rule (n_jobs)", ">= 0")
    losses: bool = arg(False, "also sweep DPO's variants over the same betas (VARIANTS)")
    online: bool = arg(False, "also online DPO (pairs from the current policy, labelled by the "
                       "learned RM) and online DPO-GT (by the ground truth) over DPO's betas")
    rehearse: bool = arg(False, "every stage at the preset's real shapes, cut to 2 steps, on "
                         "random weights and synthetic data (nothing downloaded): checks a "
                         "machine in minutes (plumbing/rehearse.py); default out_dir "
                         "runs/<preset>_rehearsal")


# --losses: the other preference losses of dpo.py, each under DPO's own settings and the same
# four betas (one rule for every loss): IPO, conservative DPO (labels taken as flipped with
# probability 0.1), SLiC's hinge, and SimPO (reference-free, length-normalised; margin 0.5 beta).
VARIANTS = {  # run folder prefix: (method name, the DPOConfig fields that make it)
    "ipo": ("IPO", dict(loss="ipo")),
    "cdpo": ("cDPO", dict(loss="dpo", label_smoothing=0.1)),
    "slic": ("SLiC", dict(loss="hinge")),
    "simpo": ("SimPO", dict(loss="simpo", gamma_beta_ratio=0.5)),
}


def plan(cfg: FrontierConfig):
    """The ordered steps: (name, main function, config)."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, not {cfg.preset!r}")
    p = PRESETS[cfg.preset]
    out = cfg.out_dir or os.path.join("runs", cfg.preset + "_rehearsal" * cfg.rehearse)
    if cfg.rehearse:  # the sweeps at one value, the inputs the rehearsal writes (counts: below)
        if p.sft["init"] not in rehearse.GPT2_SIZES:
            raise ValueError(f"--rehearse is for the presets that start from a GPT-2 (gpt2, "
                             f"paper); {cfg.preset} already runs in minutes as it is")
        p = rehearse.cut_preset(p)
        cfg = dataclasses.replace(cfg, seeds=1, **rehearse.inputs(out))
    dataset = cfg.dataset or p.dataset
    run = lambda name: os.path.join(out, name)
    common = dict(device=cfg.device)
    sft = run("sft")
    gt = cfg.ground_truth or p.ground_truth or run("gt")
    pairs_file = os.path.join(run("pairs"), "pairs.jsonl")
    base = dict(p.sft, init=cfg.base_model or p.sft["init"])
    steps = [("sft", sft_main, SFTConfig(out_dir=sft, dataset=dataset, **common, **base))]
    if not (cfg.ground_truth or p.ground_truth):
        steps.append(("ground truth", rm_train, RMConfig(out_dir=gt, init=sft, objective="label",
                                                        dataset=dataset, **common, **p.gt)))
    steps += [
        ("pairs", pairs_main, PairsConfig(out_dir=run("pairs"), init=sft, ground_truth=gt,
                                          dataset=dataset, **common, **p.pairs)),
        ("reward model", rm_train, RMConfig(out_dir=run("rm"), init=sft, objective="bt",
                                            pairs=pairs_file, **common, **p.rm)),
    ]
    # --seeds K: every trained method again with seeds 1 .. K-1 (data order, sampling); the SFT
    # model, the pairs and the reward model are shared, so the spread is that of training alone
    for seed in range(cfg.seeds):
        tag, at = (f"_seed{seed}", f" seed={seed}") if seed else ("", "")
        for b in p.betas:
            steps.append((f"DPO beta={b}{at}", dpo_main, DPOConfig(
                out_dir=run(f"dpo_beta{b}{tag}"), init=sft, pairs=pairs_file, beta=b, seed=seed,
                **common, **p.dpo)))
        for prefix, (method, fields) in VARIANTS.items() if cfg.losses else ():
            for b in p.betas:
                steps.append((f"{method} beta={b}{at}", dpo_main, DPOConfig(
                    out_dir=run(f"{prefix}_beta{b}{tag}"), init=sft, pairs=pairs_file, beta=b,
                    seed=seed, **fields, **common, **p.dpo)))
        for reward in ("rm", "gt") if cfg.online else ():  # online/dpo.py, DPO's settings
            for b in p.betas:
                name = f"online_dpo{'_gt' if reward == 'gt' else ''}_beta{b}{tag}"
                steps.append((f"Online DPO{'-GT' if reward == 'gt' else ''} beta={b}{at}",
                              online_dpo_main, OnlineDPOConfig(
                                  out_dir=run(name), init=sft, pairs=pairs_file, beta=b,
                                  seed=seed, reward=reward, rm=run("rm"), ground_truth=gt,
                                  dataset=dataset, **common, **{**p.dpo, **p.online})))
        for a in p.alphas:
            steps.append((f"Unlikelihood alpha={a}{at}", dpo_main, DPOConfig(
                out_dir=run(f"unlikelihood_alpha{a}{tag}"), init=sft, pairs=pairs_file,
                loss="unlikelihood", alpha=a, seed=seed, **common, **p.dpo)))
        for reward in ("rm", "gt"):
            for t in p.target_kls:
                name = f"ppo{'_gt' if reward == 'gt' else ''}_kl{t}{tag}"
                steps.append((f"PPO{'-GT' if reward == 'gt' else ''} target KL={t}{at}",
                              ppo_main, PPOConfig(
                                  out_dir=run(name), init=sft, reward=reward, rm=run("rm"),
                                  ground_truth=gt, dataset=dataset, target_kl=t, seed=seed,
                                  **common, **p.ppo)))
    for s in sorted(set(p.pft_seeds) | set(range(cfg.seeds))):  # its sweep is over seeds
        steps.append((f"Preferred-FT seed={s}", sft_main, SFTConfig(
            out_dir=run(f"preferred_ft_seed{s}"), init=sft, pairs=pairs_file, seed=s,
            dataset=dataset, **common, **p.pft)))
    trained = [c.out_dir for _, _, c in steps[1:] if os.path.basename(c.out_dir) not in
               ("gt", "pairs", "rm")]
    # the KL-regularised optimum of the ground truth, the reference line of the plot
    # (theory/optimum.py). Where the sweep runs keep their last checkpoints (tiny): after the
    # sweep, from a mixture of M samples of the SFT model per test prefix and 16 of each seed-0
    # PPO-GT run (the KL-penalised optimisers of the ground truth itself, nearest pi* in kind),
    # and 16 each of its highest-target run sampled at temperatures 0.7 and 0.5, sharper, to reach
    # further KL: trusted further than the SFT model's samples alone, which is what the other
    # presets use, beside the sweep.
    mixture = cfg.keep_checkpoints or keeps_last(cfg)
    ppo_gt = [run(f"ppo_gt_kl{t}") for t in p.target_kls]
    policies, temperatures = (*ppo_gt, ppo_gt[-1], ppo_gt[-1]), (1.0,) * len(ppo_gt) + (0.7, 0.5)
    steps.append(("optimum", optimum_main, OptimumConfig(
        ref=sft, ground_truth=gt, dataset=dataset, out=os.path.join(out, "optimum.jsonl"), M=64,
        policies=policies if mixture else (), temperatures=temperatures if mixture else (),
        n_per_policy=16, beta_min=1e-5 if mixture else 1e-4, n_prefixes=p.eval["n_prefixes"],
        micro_batch=p.eval["micro_batch"], **common)))
    steps.append(("evaluate", evaluate_main, EvalConfig(
        runs=tuple(trained), ref=sft, ground_truth=gt, dataset=dataset,
        out=os.path.join(out, "frontier.jsonl"), best_of=p.best_of, rm=run("rm"), **common,
        **p.eval)))
    if cfg.rehearse:  # each step cut to 2 steps, timed and its peak memory logged
        log = os.path.join(out, "rehearsal.jsonl")
        steps = [(name, rehearse.Measured(fn, name, log), rehearse.cut(c))
                 for name, fn, c in steps]
    return steps


def main(cfg: FrontierConfig):
    check_fields(cfg)
    steps = plan(cfg)
    for _, _, c in steps:  # every stage's settings in range before the first one starts
        check_fields(c, paths=False)
    if cfg.plan:
        return print_plan(cfg, steps)
    final, n = steps[-1][2], len(steps)
    jobs = n_jobs(cfg)
    if cfg.rehearse:  # its random models and synthetic data, written once
        rehearse.write_inputs(os.path.dirname(final.out), PRESETS[cfg.preset].sft["init"])
    # the chain sft -> ground truth -> pairs -> reward model, in order; then the sweep runs (and
    # the optimum of the SFT model's samples alone), which need only those, `jobs` at a time; the
    # optimum of the mixture, which needs the sweep's checkpoints, and the evaluation last
    first = next(i for i, (_, _, c) in enumerate(steps) if getattr(c, "out_dir", None) in
                 final.runs)
    last = n - 2 if steps[-2][2].policies else n - 1  # steps[last:] run after the sweep
    timings = {}
    for i, (name, fn, c) in enumerate(steps[:first], 1):
        timings.update(run_step(i, n, name, fn, c, final, cfg))
    middle = [(i, *s) for i, s in enumerate(steps[first:last], first + 1)]
    if jobs == 1:
        for i, name, fn, c in middle:
            timings.update(run_step(i, n, name, fn, c, final, cfg))
    else:
        timings.update(run_parallel(middle, n, final, cfg, jobs))
    for i, (name, fn, c) in enumerate(steps[last:], last + 1):
        timings.update(run_step(i, n, name, fn, c, final, cfg))
    results = read_jsonl(final.out)
    png = os.path.splitext(final.out)[0] + ".png"
    print(f"frontier: {len(results)} points in {final.out}, plot {png}")
    for name, t in timings.items():
        print(f"  {name}: {t:.0f} s")
    print_budget_table(results)
    if cfg.rehearse:
        rehearse.print_rehearsal(os.path.join(os.path.dirname(final.out), "rehearsal.jsonl"))
    return results


def run_step(i: int, n: int, name: str, fn, c, final: EvalConfig, cfg: FrontierConfig) -> dict:
    """Step i of n: skipped if its folder is done, else run (resuming what a kill left); a sweep
    run's checkpoints are evaluated into frontier.jsonl and pruned. Returns {what: seconds}."""
    folder, t0, timings = getattr(c, "out_dir", None), time.time(), {}
    if c is final:  # a run pruned to nothing (--no-keep_last) has all its rows already
        c = dataclasses.replace(c, runs=tuple(r for r in c.runs if list_checkpoints(r)))
    if getattr(c, "policies", ()) and not all(map(list_checkpoints, c.policies)):
        # the mixture's policies were pruned by an earlier --no-keep_last: keep its rows if it
        # has them, else the optimum of the SFT model's samples alone
        if any(r.get("estimator") == "mixture" for r in read_jsonl(c.out)):
            print(f"[{i}/{n}] {name}: kept ({c.out}; its policies' checkpoints are gone)")
            return timings
        c = dataclasses.replace(c, policies=(), temperatures=(), beta_min=1e-4)
    sweep_run = folder in final.runs
    shared = {}  # the evaluations' reference, ground truth and prefixes: loaded once per run
    if folder and open_run(c) and is_done(folder):  # open_run: refuses another config
        print(f"[{i}/{n}] {name}: done, skipped ({folder})", flush=True)
    else:
        print(f"[{i}/{n}] {name} -> {folder or c.out}", flush=True)
        # a sweep run's checkpoints are evaluated as they are written (evaluate.main's every-k
        # thinning aside), and the ones before them deleted
        try:
            if sweep_run and not cfg.keep_checkpoints and final.every == 1:
                fn(c, on_checkpoint=lambda run_dir: evaluate_live(run_dir, final, shared))
            else:
                fn(c)
        except KeyboardInterrupt:  # Ctrl-C: say which run stopped where
            raise KeyboardInterrupt(stopped(folder)) from None
        timings[name] = time.time() - t0
    if sweep_run:  # a sweep run: its points (those not evaluated live), then what's needed
        t0 = time.time()
        if evaluate_run(folder, final, thin=not cfg.keep_checkpoints, shared=shared):
            timings[f"{name}, evaluation"] = time.time() - t0
        if not cfg.keep_checkpoints and (k := prune(folder, final.out, keeps_last(cfg))):
            print(f"  pruned {folder}: {k} evaluated checkpoint{'s' * (k > 1)} deleted")
    elif folder and not cfg.keep_checkpoints and is_done(folder):
        # sft: its last checkpoint is what later stages read; gt, rm: their best/
        best = os.path.isdir(os.path.join(folder, "best"))
        prune(folder, final.out, keep_last=not best, checkpoints=False, all_steps=best)
    return timings


# ----------------------------------------------------------------------------- steps in parallel
# The tiny model's time goes to small kernels that two cores do not share well (one DPO run is only
# 1.3x faster on 2 threads than on 1), so on the CPU the tiny preset trains its independent sweep
# runs side by side, one process and one thread each (plumbing/workers.py). A process writes its own
# run folder; their rows meet in frontier.jsonl through whole-line appends under a lock
# (utils.append_jsonl); files several may write (the pairs' reference log-prob cache, by the first
# DPO-family runs) are written atomically, with the same content. A run's results depend only on its
# config and seed, not on which process ran it or when; its floats may differ in the last bits from
# a one-process run (1 thread against 2).


def run_parallel(steps: list, n: int, final: EvalConfig, cfg: FrontierConfig, jobs: int) -> dict:
    """Run (i, name, fn, config) steps `jobs` at a time (workers.run_in_workers); each step's
    progress bars and messages go to <out>/logs/<folder>.log, the console gets one line per step
    done. A step's error (or Ctrl-C) stops the others, whose runs resume from their last
    checkpoints, and is raised here."""
    from tqdm import tqdm

    logs = os.path.join(os.path.dirname(final.out) or ".", "logs")
    os.makedirs(logs, exist_ok=True)
    threads = max(1, cpu_cores() // jobs)
    print(f"{len(steps)} steps, {jobs} at a time ({threads} thread{'s' * (threads > 1)} each); "
          f"their output: {logs}/", flush=True)
    # the reference's row first, here: two workers would each add it; the plot waits for the end
    evaluate_main(dataclasses.replace(final, runs=(), best_of=(), plot=False))
    final = dataclasses.replace(final, include_ref=False, plot=False)
    cfg = dataclasses.replace(cfg, keep_last=keeps_last(cfg))  # (a worker reads no PRESETS)
    names = {i: (name, getattr(c, "out_dir", None)) for i, name, _, c in steps}
    tasks = [(i, os.path.join(logs, f"{os.path.basename(names[i][1] or c.out)}.log"), run_step,
              (i, n, name, fn, c, final, cfg)) for i, name, fn, c in steps]
    timings, bar = {}, tqdm(total=len(steps), desc="sweep", unit="step")

    def done(i, t):
        name, folder = names[i]
        timings[i] = t
        bar.write(f"[{i}/{n}] {name}: done" if name in t else
                  f"[{i}/{n}] {name}: done, skipped ({folder})")
        bar.update()

    try:
        run_in_workers(tasks, jobs, threads, done)
    finally:
        bar.close()
    return {k: t for i in sorted(timings) for k, t in timings[i].items()}


if __name__ == "__main__":
    run_main(main, FrontierConfig)
