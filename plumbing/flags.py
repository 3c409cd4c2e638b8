"""A config dataclass as command-line flags, and the check of its fields' ranges.

Each field of a script's config, declared with `arg(default, help, check)`, becomes `--field`, so
the flags, their defaults and `main(cfg)` called from a notebook are the same thing; check_fields
holds each field to its declared range.
"""

import argparse
import dataclasses
import os
import re
import types
import typing


def arg(default, help: str, check=None):
    """A config field: its default, its --help text and the range check_fields holds it to.

    check: None (any value); "> 0"; ">= 0"; (low, high): low <= x < high; (low, high, "]"):
    low <= x <= high; "file" or "path": an input file (or file or folder) that must exist;
    "device": auto, cpu, cuda, cuda:N or mps. None as a value means "not set" and is not checked.
    An unknown check is a TypeError here, when the config class is defined.
    """
    if not (check in (None, "> 0", ">= 0", "file", "path", "device")
            or isinstance(check, tuple) and len(check) in (2, 3) and check[2:] in ((), ("]",))):
        raise TypeError(f"arg: unknown check {check!r}")
    return dataclasses.field(default=default, metadata={"help": help, "check": check})


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


def config_parser(cls, description: str | None = None, epilog: str | None = None,
                  prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one --flag per field of the dataclass `cls`."""
    ap = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                 formatter_class=_HelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, nargs = _flag_type(hints[f.name])
        kw = dict(default=f.default, help=f.metadata.get("help", " ").replace("%", "%%"),
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


def parse_config(cls, argv=None, description=None, epilog=None, prog=None):
    """Build a config dataclass from command-line flags (defaults = the dataclass defaults)."""
    ns = config_parser(cls, description, epilog, prog).parse_args(argv)
    values = vars(ns)
    for f in dataclasses.fields(cls):
        if isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


# ----------------------------------------------------------------------------- field ranges


def check_fields(cfg, paths: bool = True):
    """Raise one ValueError naming the flag of the first field out of its declared range (arg's
    check); with paths, also a FileNotFoundError for an input file or folder that does not exist.
    Run once per config: by plumbing.runs.Run, or at the top of a main that has no Run."""
    for f in dataclasses.fields(cfg):
        v, flag, check = getattr(cfg, f.name), f"--{f.name}", f.metadata.get("check")
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if check is None or x is None:
                continue
            numeric = check in ("> 0", ">= 0") or isinstance(check, tuple)
            if numeric and (isinstance(x, bool) or not isinstance(x, (int, float))):
                raise ValueError(f"{flag} must be a number, not {x!r}")
            if check == "device":
                if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", x):
                    raise ValueError(f"{flag} must be auto, cpu, cuda, cuda:N or mps, not {x!r}")
            elif check in ("file", "path"):
                if paths and x and check == "file" and not os.path.isfile(x):
                    raise FileNotFoundError(f"{flag} {x}: no such file")
                if paths and x and check == "path" and not os.path.exists(x):
                    raise FileNotFoundError(f"{flag} {x}: no such file or folder")
            elif check == "> 0" and not x > 0:
                raise ValueError(f"{flag} must be positive, got {x}")
            elif check == ">= 0" and not x >= 0:
                raise ValueError(f"{flag} must be non-negative, got {x}")
            elif isinstance(check, tuple):
                lo, hi, closed = check[0], check[1], check[2:] == ("]",)
                if not (lo <= x <= hi if closed else lo <= x < hi):
                    raise ValueError(f"{flag} must lie in [{lo}, {hi}{']' if closed else ')'}, "
                                     f"got {x}")


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
