"""A sweep run's checkpoints as they are written: each evaluated into the results file
(frontier.jsonl) once, then deleted when nothing needs it any more. frontier.py calls this
between its steps, and, through the on_checkpoint argument of a sweep run's main, while it trains.

A checkpoint is deleted only after its row is in the results file, and by an atomic rename
first, so a kill at any moment resumes with nothing evaluated twice and nothing lost: a rerun
skips what has a row (`evaluated`) and finishes a removal the kill interrupted (`prune`).
"""

import dataclasses
import json
import os
import shutil

from evaluate import EvalConfig, checkpoints_of
from evaluate import main as evaluate_main

from plumbing.runs import is_done, rng_state, set_rng_state
from plumbing.utils import list_checkpoints, read_jsonl


def result_path(checkpoint: str, results: str) -> str:
    """A checkpoint's `checkpoint` field in a results file: its path relative to the file's folder
    (as evaluate.main writes it)."""
    return os.path.relpath(os.path.abspath(checkpoint), os.path.dirname(os.path.abspath(results)))


def evaluated(results: str) -> set[str]:
    """The checkpoints that have their row in a results file (best-of-N rows aside)."""
    return {r["checkpoint"] for r in read_jsonl(results) if r.get("best_of") is None}


def saved_steps(total: int, save_every: int) -> list[int]:
    """The steps a run of `total` steps saves a checkpoint at (runs.Run.due)."""
    return list(range(save_every, total + 1, save_every)) + ([total] if total % save_every else [])


def remove_checkpoint(path: str):
    """Delete a checkpoint folder: renamed first (one atomic step, after which no one lists it),
    then removed; prune finishes a removal a kill interrupted."""
    shutil.rmtree(path + ".pruned", ignore_errors=True)
    os.rename(path, path + ".pruned")
    shutil.rmtree(path + ".pruned")


def evaluate_run(run: str, ev: EvalConfig, thin: bool, shared: dict | None = None) -> int:
    """Evaluate the checkpoints of a finished sweep run that have no row in ev.out yet
    (evaluate.main on this run alone; the reference too while it has none); returns how many.
    evaluate.main takes every `every`-th checkpoint of the listing, which a deletion would shift:
    with thin (pruning) and every > 1, the checkpoints it would skip in the full listing are
    deleted first, and what is left is evaluated whole (every=1). shared: evaluate.main's, kept
    by the caller across the run's evaluations."""
    every, ckpts = ev.every, list_checkpoints(run)
    if thin and every > 1 and ckpts:  # (prune leaves the last one while any is left)
        with open(os.path.join(run, "run_config.json")) as f:
            save_every = json.load(f)["save_every"]
        written = saved_steps(ckpts[-1][0], save_every)  # the last step saved is the total
        keep = {s for i, s in enumerate(written) if i % every == every - 1 or s == written[-1]}
        for step, path in ckpts:
            if step not in keep:
                remove_checkpoint(path)
        every = 1
    seen = evaluated(ev.out)
    todo = [p for _, p in checkpoints_of(run, every) if result_path(p, ev.out) not in seen]
    if todo:
        print(f"  evaluating {run}: {len(todo)} checkpoints -> {ev.out}")
        evaluate_main(dataclasses.replace(ev, runs=(run,), every=every, best_of=()), shared)
    return len(todo)


def evaluate_live(run: str, ev: EvalConfig, shared: dict | None = None):
    """While a sweep run trains (the on_checkpoint that frontier.py passes to its main, called
    just after a checkpoint and its state.pt are written): evaluate its checkpoints that have no
    row yet, then delete every evaluated one but the newest, the one the run resumes from. The
    global RNG state is restored afterwards, so the run trains on as it would without it. The
    plot waits for the sweep's end. shared: as evaluate_run's, one dict for the whole run."""
    kept = rng_state()
    evaluate_run(run, dataclasses.replace(ev, plot=False), thin=False, shared=shared)
    remove_evaluated(run, ev.out, keep_last=True)
    set_rng_state(kept)


def remove_evaluated(run: str, results: str, keep_last: bool) -> int:
    """Delete each checkpoint of `run` whose row is in `results` (but the newest if keep_last);
    returns how many went."""
    seen = evaluated(results)
    ckpts = list_checkpoints(run)[:-1] if keep_last else list_checkpoints(run)
    old = [p for _, p in ckpts if result_path(p, results) in seen]
    for path in old:
        remove_checkpoint(path)
    return len(old)


def prune(run: str, results: str, keep_last: bool = True, checkpoints: bool = True,
          all_steps: bool = False) -> int:
    """Delete what a finished run no longer needs: its state.pt (read only to resume an unfinished
    run) and, with `checkpoints`, each checkpoint whose row is in `results`, but the last one if
    keep_last (then the run stays loadable); all_steps: every step checkpoint, evaluated or not,
    but the last one if keep_last (the reward model's all: its best/ is what is read; a policy
    whose last checkpoint alone is read keeps it). Idempotent; returns how many went."""
    if not is_done(run):
        return 0
    for name in os.listdir(run):  # a removal a kill interrupted
        if name.endswith(".pruned"):
            shutil.rmtree(os.path.join(run, name))
    if all_steps:
        old = [p for _, p in list_checkpoints(run)][:-1 if keep_last else None]
        for path in old:
            remove_checkpoint(path)
        n = len(old)
    else:
        n = remove_evaluated(run, results, keep_last) if checkpoints else 0
    if os.path.exists(os.path.join(run, "state.pt")):
        os.remove(os.path.join(run, "state.pt"))
    return n
