"""The classroom notebooks: executed top to bottom by these tests, committed with their outputs.

Each notebook's first code cell finds the repository root (model.py in . or ..). Only outside a
checkout, e.g. in a fresh Google Colab runtime, does it clone REPO_URL and pip-install it. REPO_URL
is a Colab form field whose default is a placeholder: the reader types the address of their copy
of the repository (their fork), and the cell refuses to clone the placeholder. The tests check
these branches of that cell without a network. Then they execute every notebook in a
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
import statistics
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
PLACEHOLDER_URL = "https://github.com/<you>/dpo-from-scratch"  # every first cell's REPO_URL
FORK_URL = "https://github.com/someone/dpo-from-scratch"  # what a reader types into the form
COMMITTED_FRONTIER = os.path.join(ROOT, "assets", "tiny_frontier.jsonl")
SAVE = "execute and save it with: python tests/test_notebooks.py notebooks/{}"
SEED_BUDGETS = (1, 2, 3, 5, 10)  # frontier.ipynb's table over the seeds: KL budgets in nats
UNTRAINED = ("SFT", "Best-of-N")


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


def setup_cell(name, repo_url=PLACEHOLDER_URL):
    """The notebook's first code cell, with `repo_url` typed into its REPO_URL field."""
    source = code_cells(read(name))[0].source
    assert source.count(f'"{PLACEHOLDER_URL}"') == 1, name
    return source.replace(f'"{PLACEHOLDER_URL}"', f'"{repo_url}"')


def test_every_first_cell_is_the_same_setup_cell_with_repo_url():
    sources = {name: setup_cell(name) for name in NOTEBOOKS}
    for name, source in sources.items():
        first = ast.parse(source).body[0]  # REPO_URL = "..." comes first, to be easy to find
        assert (isinstance(first, ast.Assign) and [t.id for t in first.targets] == ["REPO_URL"]
                and first.value.value == PLACEHOLDER_URL), f"{name}: REPO_URL does not come first"
        assert source.count("REPO_URL = ") == 1, name
        # a Colab form field (a text box beside the code), and one comment line above it that
        # says what to type there
        lines = source.splitlines()
        i = next(i for i, line in enumerate(lines) if line.startswith("REPO_URL = "))
        assert lines[i] == f'REPO_URL = "{PLACEHOLDER_URL}"  # @param {{type:"string"}}', (
            f"{name}: REPO_URL is not a Colab form field: {lines[i]!r}")
        assert i == 1 and lines[0].startswith("# ") and "fork" in lines[0], (
            f"{name}: one comment line, saying what to type, should come right above REPO_URL")
    odd = [n for n in NOTEBOOKS if sources[n] != sources[NOTEBOOKS[0]]]
    assert not odd, f"first code cell of {odd} differs from {NOTEBOOKS[0]}'s: keep them identical"


def run_setup(monkeypatch, cwd, run, repo_url=FORK_URL):
    """Execute the setup cell in-process with cwd `cwd`, `repo_url` in its REPO_URL field and
    subprocess.run replaced by `run`; os.system and the other subprocess entry points fail.
    sys.path is restored afterwards."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f"the setup cell called {args} outside subprocess.run")

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(subprocess, "run", run)
    for name in ("call", "check_call", "check_output", "Popen"):
        monkeypatch.setattr(subprocess, name, forbidden)
    monkeypatch.setattr(os, "system", forbidden)
    namespace = {}
    exec(setup_cell(NOTEBOOKS[0], repo_url), namespace)
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
    assert calls == [["git", "clone", "--depth", "1", FORK_URL, clone], install]
    assert ns["ROOT"] == clone and ns["NOTEBOOK_DIR"] == os.path.join(clone, "notebooks")
    assert os.getcwd() == os.path.join(clone, "notebooks") and sys.path[0] == clone

    calls.clear()  # the cell run again: now inside the clone, nothing to do
    exec(setup_cell(NOTEBOOKS[0], FORK_URL), {})
    assert calls == []
    monkeypatch.chdir(tmp_path)  # a restarted runtime (back in its first folder), clone kept
    exec(setup_cell(NOTEBOOKS[0], FORK_URL), {})
    assert calls == [install]


def test_setup_cell_outside_a_checkout_stops_on_the_placeholder_url(monkeypatch, tmp_path):
    def no_command(cmd, *args, **kwargs):
        raise AssertionError(f"with the placeholder REPO_URL the setup cell ran {cmd}")

    with pytest.raises(ValueError) as error:  # nothing cloned, installed or created
        run_setup(monkeypatch, tmp_path, no_command, repo_url=PLACEHOLDER_URL)
    message = str(error.value)
    assert "set REPO_URL" in message and "\n" not in message, message  # one clear line
    assert os.listdir(tmp_path) == [] and os.getcwd() == str(tmp_path)


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


def settings_and_seeds(rows):
    """{(method, swept value): the seeds of its runs} of the trained methods."""
    out = {}
    for r in rows:
        if r["method"] not in UNTRAINED:
            out.setdefault((r["method"], r["value"]), set()).add(r.get("seed"))
    return out


def over_seeds(rows, method, budget):
    """A method's envelope at `budget` averaged over its seeds, computed here independently of the
    notebook: per seed the best reward within the budget over every setting, then (mean, standard
    error or None, seeds that reach the budget, seeds); None when no seed reaches it."""
    mine = [r for r in rows if r["method"] == method]
    seeds = {r.get("seed") for r in mine}
    best = [max((r["reward"] for r in mine if r.get("seed") == s and r["kl"] <= budget),
                default=None) for s in seeds]
    best = [v for v in best if v is not None]
    if not best:
        return None
    se = statistics.stdev(best) / len(best) ** 0.5 if len(best) > 1 else None
    return statistics.fmean(best), se, len(best), len(seeds)


def shown_over_seeds(seeded):
    mean, se, k, n_seeds = seeded
    return (f"{mean:.3f}" + (f" ± {se:.3f}" if se is not None else "")
            + (f" ({k} of {n_seeds} seeds)" if k < n_seeds else ""))


def ranked_over_seeds(rows, budget):
    """[(method, over_seeds)] of the trained methods with a checkpoint within `budget`, the
    highest mean first."""
    methods = sorted({r["method"] for r in rows} - set(UNTRAINED))
    seeded = [(m, over_seeds(rows, m, budget)) for m in methods]
    return sorted([(m, v) for m, v in seeded if v], key=lambda mv: -mv[1][0])


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
    for (method, value), seeds in settings_and_seeds(rows).items():
        if len(seeds) > 1:  # the summary says how many seeds a setting's checkpoints come from
            setting = re.escape(f"={value} (")
            assert re.search(rf"^{re.escape(method)} .*{setting}\d+ at steps \d+-\d+,"
                             rf" {len(seeds)} seeds\)", out, re.M), (method, value)
    for r in rows:
        if r.get("kl_is_bound"):
            assert f"best-of-{r['value']:<3d} KL bound" in out
            assert f"reward {r['reward']:.3f}" in out
    assert images(nb) == 3  # the k1/k3 check, the frontier and report.figure.frontier_figure
    tables = [o["data"]["text/markdown"] for c in code_cells(nb) for o in c.outputs
              if "text/markdown" in o.get("data", {})]
    assert len(tables) == 3 and tables[0].startswith("| method | KL ≤ 2 | KL ≤ 5 | KL ≤ 10 |")
    assert tables[1].startswith("| method (seeds) | " + " | ".join(
        f"KL ≤ {b}" for b in SEED_BUDGETS) + " |")
    for b in SEED_BUDGETS:  # the trained methods ranked by their mean over the seeds
        ranked = ranked_over_seeds(rows, b)
        assert re.search(rf"^KL ≤ {b:<2d}  " + r"  >  ".join(
            rf"{re.escape(m)} {re.escape(shown_over_seeds(seeded))}" for m, seeded in ranked),
            out, re.M), b
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
    from plumbing import presets

    tiny = presets.PRESETS["tiny"]
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

    # the measured ordering, "In the committed file": which trained method has the highest mean
    # over the seeds at each budget. The prose describes the last two regimes, one method up to a
    # budget and another from the next one on, and names the leader of any regime before them
    leaders = [(b, ranked_over_seeds(rows, b)) for b in SEED_BUDGETS]
    regimes = []  # [(method, [budgets])]
    for b, ranked in leaders:
        if regimes and regimes[-1][0] == ranked[0][0]:
            regimes[-1][1].append(b)
        else:
            regimes.append((ranked[0][0], [b]))
    assert len(regimes) >= 2, f"frontier.ipynb describes two regimes; the file has {regimes}"
    (first, first_budgets), (second, second_budgets) = regimes[-2:]
    at = {b: dict(ranked) for b, ranked in leaders}

    def shown(method, b):
        return shown_over_seeds(at[b][method])

    for method, budgets in regimes[:-2]:  # an earlier leader, named at its budgets
        for b in budgets:
            nats = f"{b} nat" + "s" * (b != 1)
            assert f"{method} has the highest mean within {nats} ({shown(method, b)}" in prose, (
                method, b)

    upto, since = first_budgets[-1], second_budgets[0]
    runners_up = [m for m, _ in dict(leaders)[upto][1:3]]
    expected = [
        f"In the committed file**, with {len(seeds)} seeds of every trained setting",
        f"{first} is the best trained method up to {upto} nats of KL ({shown(first, upto)} within"
        f" {upto} nats, against {runners_up[0]}'s {shown(runners_up[0], upto)} and"
        f" {runners_up[1]}'s {shown(runners_up[1], upto)}",
        f"{second} leads from {since} nats ({shown(second, since)} within {since} nats, against"
        f" {first}'s {shown(first, since)}",
        f"within {SEED_BUDGETS[-1]} nats {first} reaches {shown(first, SEED_BUDGETS[-1])}, still"
        f" below {second}'s {shown(second, SEED_BUDGETS[-1])}",
        f"The committed file holds {len(seeds)} seeds of every trained setting",
    ]
    for phrase in expected:
        assert phrase in prose, f"frontier.ipynb should say {phrase!r}, as the file does"
    assert all(len(s) == len(seeds) for (m, _), s in settings_and_seeds(rows).items()
               if m != "Preferred-FT")  # "3 seeds of every trained setting"
    if "and no PPO checkpoint below 1 nat" in prose:
        assert min(r["kl"] for r in rows if r["method"] == "PPO") > 1
    if "Preferred-FT is the lowest trained method at every budget" in prose:
        assert all(ranked[-1][0] == "Preferred-FT" for _, ranked in leaders)
    (best_of,) = [r for r in rows if r["method"] == "Best-of-N"
                  and r["value"] == max(q["value"] for q in rows if q["method"] == "Best-of-N")]
    assert (f"best-of-{best_of['value']} reaches {best_of['reward']:.3f} at its KL bound of"
            f" {best_of['kl']:.2f} nats, above every trained method's mean within {upto} nats"
            in prose and best_of["reward"] > at[upto][first][0])


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
    # section 8's prose says what the run printed: the margin grows over the run; the steps at
    # which it fell or the loss rose, if any, are counted by the run itself
    prose = " ".join(" ".join(c.source.split()) for c in nb.cells if c.cell_type == "markdown")
    margin = re.search(r"^the mean margin h: (\S+) at step 0, (\S+) at step \d+; it fell at (\d+)"
                       r" of the \d+ steps", out, re.M)
    loss = re.search(r"^the batch loss rose at (\d+) of the \d+ steps", out, re.M)
    assert margin and loss, "dpo_step_by_step.ipynb no longer prints the margin's and loss's course"
    says = ("The margin still grows over the run, because the rest of the rejected completion"
            " falls much faster. It need not grow at every step")
    assert says in prose and "and those at which the batch loss rose" in prose
    assert float(margin[2]) > float(margin[1]), (
        f"dpo_step_by_step.ipynb section 8 says {says!r}, but the run printed {margin[0]!r} and"
        f" {loss[0]!r}: make the prose say what the output shows")


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
