"""The classroom notebooks: executed top to bottom by these tests, committed with their outputs.

Each notebook's first code cell finds the repository root (model.py in . or ..). Only outside a
checkout, e.g. in a fresh Google Colab runtime, does it clone REPO_URL and pip-install it; the
tests check both branches of that cell without a network. Then they execute every notebook in a
fresh kernel from notebooks/, inside the checkout (so nothing is cloned or downloaded), and check
what each one shows:

  frontier.ipynb          reads assets/tiny_frontier.jsonl (or the file its parameter names)
  dpo_bandit.ipynb        asserts that DPO and PPO reach the bandit's closed-form optimum
  dpo_step_by_step.ipynb  one DPO batch on a tiny SFT model, cell by cell; asserts the identities

The committed notebooks keep their outputs, plots included, so that GitHub shows them rendered.
After editing a notebook, execute it and save it with its outputs (cwd notebooks/, a fresh
kernel; about a minute for all three on two CPU cores):

    python tests/test_notebooks.py notebooks/*.ipynb
"""

import ast
import copy
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = ("frontier.ipynb", "dpo_bandit.ipynb", "dpo_step_by_step.ipynb")
REPO_URL = "https://github.com/OWNER/dpo-from-scratch"  # what every first cell must clone
COMMITTED_FRONTIER = os.path.join(ROOT, "assets", "tiny_frontier.jsonl")
SAVE = "execute and save it with: python tests/test_notebooks.py notebooks/{}"


def read(name):
    return nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)


def execute(nb, parameters=None, cwd=NOTEBOOK_DIR):
    """Run a notebook in a fresh kernel with cwd `cwd`, in place; `parameters` replaces the source
    of the cell tagged "parameters". Returns the notebook, now with its outputs."""
    if parameters is not None:
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        cell.source = parameters
    # the notebook's own plotting backend (inline), so that every figure is really drawn
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": cwd}})
    client.execute(env=env)
    return nb


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def text_output(nb):
    """Everything the notebook printed."""
    return "".join(o.get("text", "") for c in code_cells(nb) for o in c.outputs
                   if o.output_type == "stream")


def shown_text(nb):
    """Per code cell, what a reader sees as text: printed lines, results, markdown displays."""
    return [[o.get("text", "") if o.output_type == "stream"
             else {k: v for k, v in o.get("data", {}).items() if k.startswith("text/")}
             for o in c.outputs] for c in code_cells(nb)]


def images(nb):
    return sum("image/png" in o.get("data", {}) for c in code_cells(nb) for o in c.outputs)


def shows(source):
    """Whether a code cell displays something: a print, display or show call, or a last
    expression (the cell's result)."""
    tree = ast.parse(source)
    calls = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))}
    last_is_expression = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    return bool(calls & {"print", "display", "show"}) or last_is_expression


# ----------------------------------------------------------------------------- the first cell


def setup_cell(name):
    return code_cells(read(name))[0].source


def test_every_first_cell_is_the_same_setup_cell_with_repo_url():
    sources = {name: setup_cell(name) for name in NOTEBOOKS}
    for name, source in sources.items():
        first = ast.parse(source).body[0]  # REPO_URL = "..." comes first, to be easy to find
        assert (isinstance(first, ast.Assign) and [t.id for t in first.targets] == ["REPO_URL"]
                and first.value.value == REPO_URL), f"{name}: first statement is not REPO_URL"
        assert source.count("REPO_URL = ") == 1, name
    odd = [n for n in NOTEBOOKS if sources[n] != sources[NOTEBOOKS[0]]]
    assert not odd, f"first code cell of {odd} differs from {NOTEBOOKS[0]}'s: keep them identical"


def run_setup(monkeypatch, cwd, run):
    """Execute the setup cell in-process with cwd `cwd` and subprocess.run replaced by `run`;
    os.system and the other subprocess entry points fail. sys.path is restored afterwards."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f"the setup cell called {args} outside subprocess.run")

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(subprocess, "run", run)
    for name in ("call", "check_call", "check_output", "Popen"):
        monkeypatch.setattr(subprocess, name, forbidden)
    monkeypatch.setattr(os, "system", forbidden)
    namespace = {}
    exec(setup_cell(NOTEBOOKS[0]), namespace)
    return namespace


@pytest.mark.parametrize("where", ["notebooks", "root"])
def test_setup_cell_inside_the_checkout_only_finds_the_root(monkeypatch, where):
    def no_command(cmd, *args, **kwargs):
        raise AssertionError(f"inside the checkout the setup cell ran {cmd}")

    cwd = NOTEBOOK_DIR if where == "notebooks" else ROOT
    ns = run_setup(monkeypatch, cwd, no_command)
    assert ns["ROOT"] == ROOT and ns["NOTEBOOK_DIR"] == NOTEBOOK_DIR
    assert os.getcwd() == cwd and ROOT in sys.path


def test_setup_cell_outside_a_checkout_clones_and_installs(monkeypatch, tmp_path):
    calls = []
    clone = str(tmp_path / "dpo-from-scratch")

    def fake_run(cmd, *args, **kwargs):
        calls.append(list(cmd))
        if cmd[:2] == ["git", "clone"]:  # leave what the cell looks for in a clone
            os.makedirs(os.path.join(cmd[-1], "notebooks"))
            open(os.path.join(cmd[-1], "model.py"), "w").close()
        return subprocess.CompletedProcess(cmd, 0)

    install = [sys.executable, "-m", "pip", "install", "--quiet", clone]
    ns = run_setup(monkeypatch, tmp_path, fake_run)
    assert calls == [["git", "clone", "--depth", "1", REPO_URL, clone], install]
    assert ns["ROOT"] == clone and ns["NOTEBOOK_DIR"] == os.path.join(clone, "notebooks")
    assert os.getcwd() == os.path.join(clone, "notebooks") and sys.path[0] == clone

    calls.clear()  # the cell run again: now inside the clone, nothing to do
    exec(setup_cell(NOTEBOOKS[0]), {})
    assert calls == []
    monkeypatch.chdir(tmp_path)  # a restarted runtime (back in its first folder), clone kept
    exec(setup_cell(NOTEBOOKS[0]), {})
    assert calls == [install]


# ----------------------------------------------------------------------------- committed files


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_holds_its_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    cells = code_cells(nb)
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{name} was not executed top to bottom in one kernel (execution counts {counts}); "
        + SAVE.format(name))
    for i, c in enumerate(cells, 1):
        kinds = [o.output_type for o in c.outputs]
        assert "error" not in kinds, f"{name}: code cell {i} saved with an error"
        assert not any(o.get("name") == "stderr" for o in c.outputs), (
            f"{name}: code cell {i} saved with stderr output (a warning?)")
        if shows(c.source):
            assert c.outputs, f"{name}: code cell {i} shows something but holds no output; " + (
                SAVE.format(name))
        if "plt.show()" in c.source:
            assert any("image/png" in o.get("data", {}) for o in c.outputs), (
                f"{name}: code cell {i} draws a figure but holds no image")
    assert images(nb) >= 1, f"{name} holds no plot"
    assert ROOT not in json.dumps([c.outputs for c in cells]), (
        f"{name}: outputs hold a path of this machine ({ROOT})")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == (1 if name == "frontier.ipynb" else 0)


# ----------------------------------------------------------------------------- frontier.ipynb


def frontier_rows(path=COMMITTED_FRONTIER):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_frontier_notebook_shows_the_committed_frontier_by_default():
    committed = read("frontier.ipynb")
    parameters = next(c for c in committed.cells if "parameters" in c.metadata.get("tags", []))
    assert parameters.source == 'FRONTIER = "../assets/tiny_frontier.jsonl"'
    nb = execute(copy.deepcopy(committed))
    out, rows = text_output(nb), frontier_rows()
    assert f"{len(rows)} evaluated checkpoints from assets/tiny_frontier.jsonl\n" in out
    assert "instead" not in out  # no fallback
    for method, n in Counter(r["method"] for r in rows).items():
        assert re.search(rf"^{re.escape(method)} +{n} checkpoints? ", out, re.M), method
    for r in rows:
        if r.get("kl_is_bound"):
            assert f"best-of-{r['value']:<3d} KL bound" in out
            assert f"reward {r['reward']:.3f}" in out
    assert images(nb) == 2  # the k1/k3 check and the frontier
    tables = [o["data"]["text/markdown"] for c in code_cells(nb) for o in c.outputs
              if "text/markdown" in o.get("data", {})]
    assert len(tables) == 2 and tables[0].startswith("| method | KL ≤ 2 | KL ≤ 5 | KL ≤ 10 |")
    # the committed outputs are those of the current code and file: this notebook is
    # deterministic, so re-executing it must show the same text
    assert shown_text(nb) == shown_text(committed), (
        "the committed frontier.ipynb shows other outputs than it produces now; "
        + SAVE.format("frontier.ipynb"))


def test_frontier_notebook_on_another_file(tmp_path):
    rows = [r for r in frontier_rows() if r["method"] in ("SFT", "DPO", "Best-of-N")]
    path = tmp_path / "my_frontier.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = text_output(execute(read("frontier.ipynb"), parameters=f"FRONTIER = {str(path)!r}"))
    assert f"{len(rows)} evaluated checkpoints from {path}\n" in out
    assert "instead" not in out
    n_dpo = sum(r["method"] == "DPO" for r in rows)
    assert re.search(rf"^DPO +{n_dpo} checkpoints", out, re.M) and "PPO" not in out


def test_frontier_notebook_falls_back_to_the_committed_file(tmp_path):
    missing = tmp_path / "no_such_frontier.jsonl"
    out = text_output(execute(read("frontier.ipynb"), parameters=f"FRONTIER = {str(missing)!r}"))
    assert f"{missing} is missing or empty: using assets/tiny_frontier.jsonl instead" in out
    assert f"{len(frontier_rows())} evaluated checkpoints from assets/tiny_frontier.jsonl" in out


def test_frontier_prose_agrees_with_the_committed_file():
    rows = frontier_rows()
    prose = " ".join(" ".join(c.source.split()) for c in read("frontier.ipynb").cells
                     if c.cell_type == "markdown")

    def runs(method):  # {(setting, seed): sorted checkpoint steps}
        out = {}
        for r in rows:
            if r["method"] == method:
                out.setdefault((r["value"], r.get("seed")), []).append(r["step"])
        return {k: sorted(v) for k, v in out.items()}

    def last(method):  # the longest run (early stopping ends others sooner)
        return max(s[-1] for s in runs(method).values())

    def every(method):  # checkpoints every N steps, and one where a run stopped early
        gaps = {b - a for s in runs(method).values() for a, b in zip(s, s[1:])}
        return max(gaps)

    def values(method):
        return "{" + ", ".join(f"{v:g}" for v in sorted({v for v, _ in runs(method)})) + "}"

    seeds = sorted({r["seed"] for r in rows if r["method"] == "DPO"})

    (n,) = {r["n"] for r in rows}
    (sft_checkpoint,) = {r["checkpoint"] for r in rows if r["method"] == "SFT"}
    sft_steps = int(sft_checkpoint.rsplit("step_", 1)[1])
    sweeps = {len({v for v, _ in runs(m)}) for m in ("DPO", "Unlikelihood", "PPO", "PPO-GT")}
    import frontier

    tiny = frontier.PRESETS["tiny"]
    assert last("DPO") <= tiny.dpo["steps"] and last("Unlikelihood") <= tiny.dpo["steps"]
    assert last("Preferred-FT") <= tiny.pft["steps"] and last("PPO") <= tiny.ppo["steps"]
    assert values("PPO") == values("PPO-GT") and sweeps == {4}
    assert len(runs("Preferred-FT")) == len(set(seeds) | set(tiny.pft_seeds))  # sweep: seeds
    expected = [
        f"{len(rows)} points in all", f"trained from scratch for {sft_steps} steps",
        "the paper's four values per hyper-parameter sweep", f"each run with {len(seeds)} seeds",
        "Preferred-FT with seeds " + values("Preferred-FT")[1:-1],
        f"{n} held-out test prefixes per evaluated checkpoint",
        "each run stopped by its own validation signal",
        f"at most {tiny.dpo['steps']} optimizer steps per DPO, Unlikelihood and Preferred-FT run",
        f"at most {tiny.ppo['steps']} PPO iterations",
        f"every {every('DPO')}, {every('Preferred-FT')} and {every('PPO')} of them",
        f"DPO β ∈ {values('DPO')}", f"Unlikelihood α ∈ {values('Unlikelihood')}",
        f"target KL ∈ {values('PPO')}",
        "best-of-N for N = " + " and ".join(str(v) for v, _ in sorted(runs("Best-of-N"))),
    ]
    for phrase in expected:
        assert phrase in prose, f"frontier.ipynb should say {phrase!r}, as the file does"
    assert not re.search(r"\b128\b", prose)


# ----------------------------------------------------------------------------- the others


def test_dpo_bandit_notebook_runs():
    assert "all checks passed" in text_output(execute(read("dpo_bandit.ipynb")))


def test_dpo_step_by_step_notebook_runs():
    nb = execute(read("dpo_step_by_step.ipynb"))
    out = text_output(nb)
    assert "all checks passed" in out
    assert "batch loss 0.693147, log 2 = 0.693147" in out  # policy = reference at step 0
    assert "same as dpo.concatenated_logps: True" in out
    assert images(nb) == sum("plt.show()" in c.source for c in code_cells(nb)) >= 3


# ----------------------------------------------------------------------------- the script


def save_with_outputs(path):
    """Execute the notebook at `path` (cwd: its folder, a fresh kernel) and save it with its
    outputs."""
    nb = nbformat.read(path, as_version=4)
    execute(nb, cwd=os.path.dirname(os.path.abspath(path)))
    nbformat.write(nb, path)


if __name__ == "__main__":
    import conftest  # noqa: F401  (the tests' environment: hub offline, the tiktoken cache)

    for p in sys.argv[1:]:
        t0 = time.time()
        save_with_outputs(p)
        print(f"{p}: executed in {time.time() - t0:.0f} s, saved with its outputs")
