"""The life of a run folder, in one place: refuse, resume or start; seeds and RNG state; the
progress bar; the NaN check; the log; checkpoints; `done`. A training script uses it like this,
its loop straight down the page:

    run = Run(cfg)                     # checks the fields, refuses a folder holding another
    if run.done:                       # config; writes nothing
        return run.history
    model = GPT.from_pretrained(run.resume_from or cfg.init)
    ...                                # load every input: bad input raises here, nothing written
    run.start()                        # now the folder (run_config.json), the log cut to the step
    opt = ...
    run.restore(opt)                   # resuming: optimizer, RNG and step from state.pt
    run.stop_when_stalled("loss/eval", cfg.patience)  # optional early stopping (0: off)
    for step in run.steps(total):      # step 1, 2, ... from where the run stands; a progress bar
        ...
        run.check(loss)                # a NaN or inf loss stops before the update
        ...
        run.log({"loss/train": ...})   # one row of log.jsonl, with this step's number
        if run.due(cfg.save_every):    # (also true at the step early stopping ends the run)
            run.save(opt, model, tok)  # step_XXXXXX/ and state.pt, each written atomically
            if on_checkpoint and run.main_process:  # the caller's (frontier.py: evaluate it)
                on_checkpoint(run.dir)
    return run.finish()                # `done`

and its `if __name__ == "__main__"` is `run_main(main, Config)`: flags in, one `error:` line out
for bad input, and on Ctrl-C the step the same command resumes from.

A run folder:
    run_config.json   the resolved config; another config there is refused, --overwrite restarts
    log.jsonl         one JSON object per logged step
    step_000100/      a checkpoint in the Hugging Face GPT-2 layout (+ head files)
    best/             the reward model's checkpoint with the best validation accuracy
    state.pt          optimizer, RNG, step and the script's own counters: what resume needs
    done              written last

Killed at any moment, the same command resumes from the last checkpoint and ends bit-identical to
a run that was never interrupted (CPU): batches are a pure function of the step, the RNG state is
saved with the optimizer, and log rows after the checkpoint are cut and logged again.

Early stopping (`stop_when_stalled`) ends a run once its validation signal has gone `patience`
evaluations without beating its best. The decision is read from log.jsonl alone, so a resumed run
stops at the very step an uninterrupted one does; the run's last checkpoint is at that step.
"""

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from plumbing.flags import check_fields, parse_config
from plumbing.utils import (
    append_jsonl,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    ddp_barrier,
    ddp_init,
    ddp_mean,
    get_device,
    list_checkpoints,
    read_jsonl,
    step_dir,
    write_folder,
    write_jsonl,
)


class Run:
    """One run folder, from the check of its config to `done` (see the module docstring).

    distributed: under torchrun, this process's rank and world size; rank 0 alone writes the
    folder, the others compute along (and their logging and saving are no-ops).
    """

    def __init__(self, cfg, distributed: bool = False):
        check_fields(cfg)  # every field in its range, the input files there: else one error
        self.cfg, self.dir = cfg, cfg.out_dir
        device = get_device(getattr(cfg, "device", "auto"))
        self.rank, self.world, self.device = (ddp_init(device) if distributed else (0, 1, device))
        resuming = open_run(cfg)  # refuses another config; writes nothing
        self.done = resuming and is_done(self.dir)
        self.history = read_jsonl(os.path.join(self.dir, "log.jsonl")) if self.done else []
        self.state = load_state(self.dir) if resuming and not self.done else None
        self.step = self.state["step"] if self.state else 0
        folder = step_dir(self.dir, self.step)
        self.resume_from = folder if self.state and self.state.get("checkpoint", True) else None
        if self.resume_from and not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(f"{self.dir}/state.pt resumes from step {self.step}, but "
                                    f"{folder} is missing; pass --overwrite to start over")
        self.saved = self.step  # the step of the last state.pt: where the same command resumes
        self.total, self._bar, self._t0 = None, None, time.time()
        self._stop, self.stalled = None, False  # early stopping: (key, patience, mode); stopped?
        if self.done:
            self.say(f"{self.dir} is already done; its outputs are there (log.jsonl, checkpoints)")
        else:
            set_seed(getattr(cfg, "seed", 0))

    @property
    def main_process(self) -> bool:
        return self.rank == 0

    def start(self):
        """Create (or reopen) the folder, once every input has loaded; cut the log back to the
        step being resumed (a killed run's later rows are logged again)."""
        if self.main_process:
            start_run(self.cfg)
            self.history = resume_log(self.dir, self.step if self.state else -1)
            if self.state:
                self.say(f"resuming {self.dir} from step {self.step}")
        ddp_barrier(self.world)

    def restore(self, opt=None) -> dict:
        """Resuming: load the optimizer state and the RNG states; returns state.pt's contents
        (the script's own counters), or {} for a new run."""
        if self.state is None:
            return {}
        if opt is not None:
            opt.load_state_dict(self.state["optimizer"])
        set_rng_state(self.state["rng"])
        return self.state

    def stop_when_stalled(self, key: str, patience: int, mode: str = "min"):
        """Early stopping: end the run once the logged validation signal `key` ("min": lower is
        better, "max": higher) has gone `patience` evaluations without beating its best; the
        step that decides it saves a checkpoint (`due` is true there). patience 0: off. Call it
        before `steps`; resuming, the decision is re-read from the log kept so far."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, not {mode!r}")
        self._stop = (key, patience, mode) if patience else None
        self._update_stalled()

    def _update_stalled(self):
        """Recompute `stalled` from the log (rank 0 holds it; under torchrun, broadcast)."""
        flag = False
        if self._stop and self.main_process:
            key, patience, mode = self._stop
            values = [r[key] for r in self.history if key in r]
            if values:
                best = (min if mode == "min" else max)(values)
                flag = len(values) - 1 - values.index(best) >= patience  # first time it was hit
                if flag and not self.stalled:
                    self.say(f"{self.dir}: stopping at step {self.step}: {key} has not beaten "
                             f"its best ({best:.4g}) for {patience} evaluations")
        if self._stop and self.world > 1:  # every process stops at the same step
            flag = ddp_mean(float(flag) * self.world, self.world, self.device) > 0.5
        self.stalled = flag

    def steps(self, total: int, desc: str | None = None, unit: str = "step"):
        """Yield the number of each step still to take, 1 .. total, under a progress bar; it is
        also `run.step`, the number log, check and save use. Early stopping (stop_when_stalled)
        may end it before `total`."""
        self.total = total
        self._bar = tqdm(total=total, initial=min(self.step, total), unit=unit,
                         desc=desc or os.path.basename(os.path.normpath(self.dir)),
                         mininterval=1.0, disable=not self.main_process)
        while self.step < total and not self.stalled:
            self._t0 = time.time()
            self.step += 1
            yield self.step
            self._bar.update(1)
        self._bar.close()

    def due(self, every: int) -> bool:
        """True every `every` steps, at the last one and at the step early stopping ends the run
        (when to evaluate, when to save)."""
        return self.step % every == 0 or self.step == self.total or self.stalled

    def check(self, loss: torch.Tensor):
        """Stop on a NaN or inf loss before this step's update (see check_finite)."""
        check_finite(loss, self.step, self.dir)

    def tokens_per_s(self, tokens: int) -> float:
        """Throughput of this step: `tokens` (the real tokens of this process's training batch,
        prompt + completion, no padding) times the number of processes, per second since the
        step began. The one meaning of `tokens_per_s` in every log."""
        return tokens * self.world / (time.time() - self._t0)

    def micro_batches(self, batch_size: int, micro_batch: int) -> int:
        """Micro-batches per process per optimizer step (gradient accumulation): the batch is
        split evenly over the processes and their micro-batches, else an error (before any
        folder is written)."""
        if batch_size % (micro_batch * self.world):
            raise ValueError(f"batch_size {batch_size} is not a multiple of micro_batch "
                             f"{micro_batch} x {self.world} processes")
        return batch_size // (micro_batch * self.world)

    def barrier(self):
        """Under torchrun, wait until every process gets here."""
        ddp_barrier(self.world)

    def first_then_others(self, fn, *args):
        """fn(*args) on the main process first, then on the others (under torchrun): for a
        result the first call computes and caches on disk, which the others then read."""
        if self.main_process:
            out = fn(*args)
        self.barrier()
        return out if self.main_process else fn(*args)

    def mean(self, value: float) -> float:
        """The mean of a per-process number over all processes (for logging)."""
        return ddp_mean(value, self.world, self.device)

    def accumulate(self, model, k: int, accum: int):
        """The context of micro-batch k of `accum`: under DDP, gradients are averaged across
        processes only at the last one."""
        if self.world > 1 and k < accum - 1:
            return model.no_sync()
        return contextlib.nullcontext()

    def log(self, row: dict, show: tuple = ()) -> dict:
        """Append {"step": this step, **row} to log.jsonl; `show` names the entries the progress
        bar displays."""
        row = {"step": self.step, **row}
        if self.main_process:
            log_row(self.dir, row, self.history)
            if self._bar is not None and show:
                self._bar.set_postfix({k: f"{row[k]:.3f}" for k in show}, refresh=False)
        if self._stop and (self._stop[0] in row or self.world > 1):  # torchrun: every step,
            self._update_stalled()  # since only rank 0's row holds the evaluation
        return row

    def save(self, opt=None, *parts, **counters):
        """A checkpoint of this step: step_XXXXXX/ holding each part (a model or tokenizer: any
        object with save_pretrained(folder) or save(folder)), then state.pt with the optimizer,
        the RNG states, the step and `counters`. No parts: state.pt alone."""
        if not self.main_process:
            return
        state = dict(optimizer=opt.state_dict() if opt is not None else None, rng=rng_state(),
                     checkpoint=bool(parts), **counters)
        if not parts:
            atomic_torch_save(dict(state, step=self.step), os.path.join(self.dir, "state.pt"))
        else:
            def write(folder):
                for part in parts:
                    save = getattr(part, "save_pretrained", None) or part.save
                    save(folder)
            save_checkpoint(self.dir, self.step, write, state)
        self.saved = self.step

    def say(self, message: str):
        """One line for the user on stderr (rank 0 only)."""
        if self.main_process:
            print(message, file=sys.stderr, flush=True)

    def finish(self) -> list[dict]:
        """Write `done`; return the log's rows."""
        if self._bar is not None:
            self._bar.close()
        if self.main_process:
            mark_done(self.dir)
        ddp_barrier(self.world)
        return self.history


# ----------------------------------------------------------------------------- the command line


def run_main(main, cls, argv=None, epilog=None):
    """`if __name__ == "__main__"` of every script: parse flags into a `cls` config, run
    main(config), and turn bad input into one readable line and exit status 1 (set DPO_DEBUG=1
    for the traceback); Ctrl-C into where the run stopped and exit status 130. --help shows the
    first paragraph of the script's docstring. The fields are checked by main (Run checks them)."""
    module = sys.modules[main.__module__]
    spec = getattr(module, "__spec__", None)  # python -m hh_tldr.run: say so in the usage line
    prog = f"python -m {spec.name}" if spec and "." in spec.name else None
    cfg = parse_config(cls, argv, description=first_paragraph(module.__doc__), epilog=epilog,
                       prog=prog)
    try:
        main(cfg)
    except (ValueError, OSError, FloatingPointError) as e:
        if os.environ.get("DPO_DEBUG"):
            raise
        close_bars()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:  # Ctrl-C: where the run stopped and how to go on
        if os.environ.get("DPO_DEBUG"):
            raise
        close_bars()
        print(e.args[0] if e.args else stopped(getattr(cfg, "out_dir", None)), file=sys.stderr)
        sys.exit(130)


def stopped(out_dir: str | None) -> str:
    """What to say when a run is interrupted, read from its folder: the last step it logged and
    the step the same command resumes from (state.pt's)."""
    if not out_dir or not os.path.exists(os.path.join(out_dir, "run_config.json")):
        return "stopped"
    state = os.path.join(out_dir, "state.pt")  # mmap: the step without reading the optimizer
    saved = torch.load(state, mmap=True, weights_only=False)["step"] if os.path.exists(state) else 0
    logged = [r["step"] for r in read_jsonl(os.path.join(out_dir, "log.jsonl")) if "step" in r]
    return (f"stopped{f' after step {logged[-1]}' if logged else ''}; the same command resumes "
            f"{out_dir} from step {saved}" + ("" if saved else " (no checkpoint yet: the start)"))


def close_bars():
    for bar in list(getattr(tqdm, "_instances", ())):  # a bar left open would redraw after
        bar.close()


def first_paragraph(doc: str | None) -> str | None:
    """A docstring's first paragraph, on one line: a --help description that ends where its
    sentence does."""
    return " ".join(doc.strip().split("\n\n")[0].split()) if doc else None


# ----------------------------------------------------------------------------- the pieces


def set_seed(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = dict(python=random.getstate(), numpy=np.random.get_state(),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_dict(cfg) -> dict:
    """The config as plain JSON values (tuples become lists), `overwrite` left out."""
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))
    d.pop("overwrite", None)
    return d


def with_new_defaults(cfg, old: dict) -> dict:
    """An old config's dict, plus each field of cfg added since it was written (absent from it)
    whose value now is its default: the old code behaved so, so it counts as equal."""
    new = config_dict(cfg)
    for f in dataclasses.fields(cfg):
        default = (f.default if f.default is not dataclasses.MISSING else f.default_factory()
                   if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if f.name not in old and f.name in new and default is not dataclasses.MISSING and \
                getattr(cfg, f.name) == default:
            old = {**old, f.name: new[f.name]}
    return old


def open_run(cfg) -> bool:
    """Check cfg.out_dir against cfg before anything is loaded or written. True: a run of this
    config is there to continue. False: a new run, or --overwrite. Another config there: refuse,
    naming the first differing field. A field added since the old run was written (absent from
    its run_config.json) counts as equal when it has its default now: the old code behaved so."""
    out, new = cfg.out_dir, config_dict(cfg)
    path = os.path.join(out, "run_config.json")
    if not os.path.exists(path) or getattr(cfg, "overwrite", False):
        return False
    with open(path) as f:
        old = json.load(f)
    old = with_new_defaults(cfg, old)
    if old != new:
        key = next(k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k))
        raise ValueError(f"{out} holds a run with another config ({key}: {old.get(key)!r} "
                         f"there, {new.get(key)!r} now); pass --overwrite to start over or "
                         f"choose another --out_dir")
    return True


def start_run(cfg):
    """Create (or reopen) cfg.out_dir with its run_config.json. Scripts call it once their inputs
    have loaded, so bad input leaves nothing behind. --overwrite deletes an old run first; the
    temporaries of writes that a kill interrupted are removed."""
    out = cfg.out_dir
    path = os.path.join(out, "run_config.json")
    if getattr(cfg, "overwrite", False) and os.path.exists(path):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):  # x.tmp<pid> (atomic_write), step_X.tmp / .old (write_folder)
        p = os.path.join(out, name)
        if name.endswith(".old") and not os.path.exists(p[:-4]):
            os.rename(p, p[:-4])  # killed between write_folder's two renames: the old one stays
        elif re.search(r"\.(tmp\d*|old)$", name):
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    if not os.path.exists(path):
        atomic_write_json(path, config_dict(cfg))


def save_checkpoint(out_dir: str, step: int, write, state: dict | None = None):
    """Write step_XXXXXX/ with write(folder) (atomically, see write_folder), then state.pt (if
    given) atomically. A kill at any point leaves the last complete pair: a step folder newer
    than state.pt is simply rewritten when the resumed run gets there again."""
    write_folder(step_dir(out_dir, step), write)
    if state is not None:
        atomic_torch_save(dict(state, step=step), os.path.join(out_dir, "state.pt"))


def load_state(out_dir: str) -> dict | None:
    """The resume state of a run folder, or None if it has none yet."""
    path = os.path.join(out_dir, "state.pt")
    if not os.path.exists(path):
        return None
    return torch.load(path, weights_only=False)  # our own file: optimizer states, RNG tuples


def resume_log(out_dir: str, step: int) -> list[dict]:
    """The log rows up to `step`; later rows (logged after the last checkpoint) are cut from the
    file, since the resumed run logs them again."""
    path = os.path.join(out_dir, "log.jsonl")
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    write_jsonl(path, kept)  # also drops a torn last line
    return kept


def log_row(out_dir: str, row: dict, history: list | None = None):
    append_jsonl(os.path.join(out_dir, "log.jsonl"), row)
    if history is not None:
        history.append(row)


def mark_done(out_dir: str):
    atomic_write(os.path.join(out_dir, "done"), lambda tmp: open(tmp, "w").close())


def is_done(out_dir: str) -> bool:
    return os.path.exists(os.path.join(out_dir, "done"))


def check_finite(loss: torch.Tensor, step: int, out_dir: str):
    """Stop on a NaN or inf loss at `step`, before the update, naming the last good checkpoint:
    the weights of the checkpoint at step - 1 gave this loss, so it is the one before that."""
    if not torch.isfinite(loss).all():
        good = [path for s, path in list_checkpoints(out_dir) if s < step - 1]
        raise FloatingPointError(f"loss is {loss.item()} at step {step}; stopped before the "
                                 f"update. Last good checkpoint: {good[-1] if good else 'none'}")
