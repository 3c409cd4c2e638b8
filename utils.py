"""The plumbing every script shares, one home for each piece: config dataclass -> command line,
device and autocast, seeding, run folders (config check, resume, atomic checkpoints, JSONL logs),
and the one-line error a script prints for bad input.

A run folder (see DESIGN.md):
    runs/<name>/run_config.json   the resolved config; a different one refuses, --overwrite restarts
    runs/<name>/log.jsonl         one JSON object per logged step
    runs/<name>/step_000100/      a checkpoint in the HF GPT-2 layout (+ head files)
    runs/<name>/state.pt          optimizer, scheduler, step, RNG: what resume needs
    runs/<name>/done              written last
"""

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import random
import re
import shutil
import sys
import types
import typing

import numpy as np
import torch

# ----------------------------------------------------------------------------- config <-> flags


def _field_comments(cls) -> dict:
    """The `# comment` after each field of a config dataclass, used as its --help text."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return dict(re.findall(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", src, flags=re.M))


def _flag_type(tp):
    """(argparse type, nargs) for a field's annotation: int, float, str, bool, X | None, tuple."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp, args = args[0], typing.get_args(args[0])  # X | None
    if typing.get_origin(tp) in (tuple, list):
        return args[0], "*"
    return tp, None


def config_parser(cls, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one --flag per field of the dataclass `cls`."""
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    comments, hints = _field_comments(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, nargs = _flag_type(hints[f.name])
        kw = dict(default=f.default, help=comments.get(f.name, " ").replace("%", "%%"),
                  dest=f.name)
        if tp is bool:
            ap.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, **kw)
        else:
            ap.add_argument(f"--{f.name}", type=_none_or(tp), nargs=nargs, **kw)
    return ap


def _none_or(tp):
    def convert(s):
        return None if s == "None" else tp(s)
    convert.__name__ = tp.__name__
    return convert


def parse_config(cls, argv=None, description=None):
    """Build a config dataclass from command-line flags (defaults = the dataclass defaults)."""
    ns = config_parser(cls, description).parse_args(argv)
    values = vars(ns)
    for f in dataclasses.fields(cls):
        if isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


def config_to_argv(cfg) -> list[str]:
    """The flags that rebuild `cfg` with parse_config (the inverse, for subprocesses and tests)."""
    argv = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, bool):
            argv.append(f"--{f.name}" if v else f"--no-{f.name}")
        elif isinstance(v, (tuple, list)):
            argv += [f"--{f.name}", *map(str, v)]
        else:
            argv += [f"--{f.name}", str(v)]
    return argv


def run_main(main, cls, argv=None):
    """`if __name__ == "__main__"` of every script: parse flags, run, and turn bad input into one
    readable line and exit status 1 (set DPO_DEBUG=1 for the traceback)."""
    doc = sys.modules[main.__module__].__doc__
    cfg = parse_config(cls, argv, description=doc.strip().splitlines()[0] if doc else None)
    try:
        main(cfg)
    except (ValueError, OSError, FloatingPointError) as e:
        if os.environ.get("DPO_DEBUG"):
            raise
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):  # a bar left open would redraw after
            bar.close()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


# ----------------------------------------------------------------------------- device, seed


def get_device(name: str = "auto") -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# ----------------------------------------------------------------------------- torchrun (DDP)
# Under `torchrun --nproc_per_node N`, each process takes every N-th micro-batch of the same global
# batch; DistributedDataParallel averages the gradients, so the update equals the single-process
# one. Rank 0 alone writes the run folder.


def ddp_init(device: str) -> tuple[int, int, str]:
    """(rank, world size, this process's device). A plain `python x.py` is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return dist.get_rank(), world, device


def ddp_barrier(world: int):
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def ddp_mean(value: float, world: int, device: str) -> float:
    """The mean of a per-process number over all processes (for logging)."""
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / world


def adamw(params, lr: float, device: str, **kw):
    """AdamW as one fused kernel over all parameters where PyTorch has one (CPU, CUDA): on CPU
    4-5x faster than the per-tensor loop (bench/train_step.py). weight_decay=0 is Adam."""
    return torch.optim.AdamW(params, lr=lr, fused=torch.device(device).type in ("cpu", "cuda"),
                             **kw)


def autocast(device: str):
    """bf16 autocast on CUDA (weights and optimizer stay fp32); plain fp32 elsewhere."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


# ----------------------------------------------------------------------------- atomic files


def atomic_write(path: str, write):
    """Call write(tmp_path), then rename onto `path`: readers see the old file or the new one."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path: str, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
    atomic_write(path, write)


def atomic_torch_save(obj, path: str):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def append_jsonl(path: str, *rows: dict):
    """Append whole lines, one per row, in one write. A torn last line (a kill mid-write) is cut
    off first, so a new line never glues onto half of an old one."""
    line = "".join(json.dumps(row) + "\n" for row in rows).encode()
    with open(path, "ab+") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.seek(0)
                data = f.read()
                f.truncate(data.rfind(b"\n") + 1)
        f.write(line)
        f.flush()


def read_jsonl(path: str) -> list[dict]:
    """All complete rows of a JSONL file. A torn last line is dropped; a malformed line anywhere
    else is an error that names the file and line."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    # the last piece is b"" after a final newline, or a line cut short by a kill: ignored either way
    rows = []
    for n, line in enumerate(lines[:-1], 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise ValueError(f"{path}:{n}: malformed JSON line") from None
    return rows


def write_jsonl(path: str, rows: list[dict]):
    """Replace a JSONL file atomically (used to cut a log back to a resumed step)."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    atomic_write(path, write)


# ----------------------------------------------------------------------------- run folders


def config_dict(cfg) -> dict:
    """The config as plain JSON values (tuples become lists), `overwrite` left out."""
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))
    d.pop("overwrite", None)
    return d


def open_run(cfg) -> bool:
    """Check cfg.out_dir against cfg before anything is loaded or written. True: a run of this
    config is there to continue. False: a new run, or --overwrite. Another config there: refuse,
    naming the first differing field."""
    out, new = cfg.out_dir, config_dict(cfg)
    path = os.path.join(out, "run_config.json")
    if not os.path.exists(path) or getattr(cfg, "overwrite", False):
        return False
    with open(path) as f:
        old = json.load(f)
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


def step_dir(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, f"step_{step:06d}")


def list_checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """(step, folder) of every finished checkpoint of a run, in step order."""
    found = []
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        m = re.fullmatch(r"step_(\d{6})", name)
        if m and os.path.isfile(os.path.join(out_dir, name, "config.json")):
            found.append((int(m.group(1)), os.path.join(out_dir, name)))
    return sorted(found)


def resolve_init(path: str) -> str:
    """A run folder stands for its last checkpoint; anything else (a checkpoint folder, a hub name)
    is returned as is."""
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        ckpts = list_checkpoints(path)
        if ckpts:
            return ckpts[-1][1]
    return path


def write_folder(final: str, write):
    """Fill a folder with write(folder) under a temporary name, then rename it into place: a
    reader never sees half a checkpoint. An existing folder of that name is replaced by two
    renames (old aside, new in), so a kill leaves one whole version under `final` or `.old`."""
    tmp, old = final + ".tmp", final + ".old"
    if os.path.exists(old) and not os.path.exists(final):  # a kill between the two renames
        os.rename(old, final)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(final):
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


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


def lr_at(step: int, lr: float, warmup: int, total: int | None = None, final_frac: float = 0.1):
    """Learning rate at optimizer step `step` (0-based): linear warm-up over `warmup` steps, then
    constant (total=None) or cosine decay to final_frac * lr at step `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if total is None or total <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / (total - warmup))
    return lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))
