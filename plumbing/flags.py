"""A config dataclass as command-line flags, and the check of its fields' ranges.

Each field of a script's config becomes `--field` (its `# comment` is the help text), so the flags,
their defaults and `main(cfg)` called from a notebook are the same thing.
"""

import argparse
import dataclasses
import inspect
import os
import re
import types
import typing


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown after each flag's help, unless its comment already names its default."""

    def _get_help_string(self, action):
        if "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def config_parser(cls, description: str | None = None,
                  epilog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one --flag per field of the dataclass `cls`."""
    ap = argparse.ArgumentParser(description=description, epilog=epilog,
                                 formatter_class=_HelpFormatter)
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


def parse_config(cls, argv=None, description=None, epilog=None):
    """Build a config dataclass from command-line flags (defaults = the dataclass defaults)."""
    ns = config_parser(cls, description, epilog).parse_args(argv)
    values = vars(ns)
    for f in dataclasses.fields(cls):
        if isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


# ----------------------------------------------------------------------------- field ranges
# The range of every config field whose range is known, by field name: the scripts share their
# names (lr, batch_size, ...), so one table checks them all: for every script's flags (run_main),
# and for a config built in Python when its run starts (runs.Run, evaluate.main, frontier.main
# before its first stage). A field that is None means "not set" and is skipped.

POSITIVE = {  # > 0
    "alpha", "batch_size", "beta", "block_size", "chunk", "cliprange", "cliprange_value",
    "concurrency", "epochs", "eval_every", "every", "gen_batch", "grad_clip", "horizon", "lr",
    "max_len", "max_length", "max_new_tokens", "max_prompt_length", "micro_batch", "mini_batch",
    "n_embd", "n_head", "n_layer", "n_prefixes", "n_prompts", "ppo_epochs", "samples",
    "save_every", "score_batch", "seeds", "steps", "target_kl", "M", "beta_min", "beta_max",
    "n_betas",
}
NON_NEGATIVE = {  # best_of: 0 = none (winrate.py); patience: 0 = no early stopping; jobs: 0 = auto
    "best_of", "eval_size", "init_kl_coef", "jobs", "patience", "seed", "split_seed", "vf_coef",
    "warmup", "weight_decay", "temperatures"}
INTERVALS = {  # name: (low, high, high included)
    "dropout": (0.0, 1.0, False), "label_smoothing": (0.0, 0.5, False),
    "gamma": (0.0, 1.0, True), "lam": (0.0, 1.0, True),
}
EXISTING_FILES = {"test"}  # inputs that must exist when the run starts (pairs: data.check_pairs)
EXISTING_PATHS = {"runs"}  # evaluate.py's run folders: a typo must not silently drop a curve


def check_fields(cfg, paths: bool = True):
    """Raise one ValueError naming the flag of the first field out of its range (see above); with
    paths, also a FileNotFoundError for an input file or folder that does not exist."""
    for f in dataclasses.fields(cfg):
        v, flag = getattr(cfg, f.name), f"--{f.name}"
        values = v if isinstance(v, (tuple, list)) else (v,)
        for x in values:
            if x is None or isinstance(x, (str, bool)):
                continue
            if f.name in POSITIVE and not x > 0:
                raise ValueError(f"{flag} must be positive, got {x}")
            if f.name in NON_NEGATIVE and not x >= 0:
                raise ValueError(f"{flag} must be non-negative, got {x}")
            if f.name in INTERVALS:
                lo, hi, closed = INTERVALS[f.name]
                if not (lo <= x <= hi if closed else lo <= x < hi):
                    raise ValueError(f"{flag} must lie in [{lo}, {hi}{']' if closed else ')'}, "
                                     f"got {x}")
        if f.name == "device" and isinstance(v, str) and not re.fullmatch(
                r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"--device must be auto, cpu, cuda, cuda:N or mps, not {v!r}")
        if not paths:
            continue
        for x in values:
            if not isinstance(x, str) or not x:  # "": not given (the script says if it must be)
                continue
            if f.name in EXISTING_FILES and not os.path.isfile(x):
                raise FileNotFoundError(f"{flag} {x}: no such file")
            if f.name in EXISTING_PATHS and not os.path.exists(x):
                raise FileNotFoundError(f"{flag} {x}: no such file or folder")


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
