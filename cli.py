"""A config dataclass as command-line flags, and the `if __name__ == "__main__"` of every script.

Each field of a script's config becomes `--field` (its `# comment` is the help text), so the flags,
their defaults and `main(cfg)` called from a notebook are the same thing.
"""

import argparse
import dataclasses
import inspect
import os
import re
import sys
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


def run_main(main, cls, argv=None, epilog=None):
    """`if __name__ == "__main__"` of every script: parse flags, run, and turn bad input into one
    readable line and exit status 1 (set DPO_DEBUG=1 for the traceback). --help shows the first
    paragraph of the script's docstring."""
    doc = sys.modules[main.__module__].__doc__
    cfg = parse_config(cls, argv, description=first_paragraph(doc), epilog=epilog)
    try:
        main(cfg)
    except (ValueError, OSError, FloatingPointError) as e:
        if os.environ.get("DPO_DEBUG"):
            raise
        _close_bars()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: where the run stopped and how to go on, no traceback
        if os.environ.get("DPO_DEBUG"):
            raise
        _close_bars()
        from runs import Run

        print(Run.current.stopped() if Run.current else "stopped", file=sys.stderr)
        sys.exit(130)


def _close_bars():
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):  # a bar left open would redraw after
        bar.close()


def first_paragraph(doc: str | None) -> str | None:
    """A docstring's first paragraph, on one line: a --help description that ends where its
    sentence does."""
    return " ".join(doc.strip().split("\n\n")[0].split()) if doc else None
