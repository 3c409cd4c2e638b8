"""The classroom notebooks run headless, top to bottom, and are saved without outputs.

dpo_bandit.ipynb asserts in its last cell that DPO and PPO reach the closed-form optimum, so
running it is itself a check of dpo.preference_loss and ppo.py's pure functions.

Strip a notebook's outputs before committing it:
    python tests/test_notebooks.py notebooks/*.ipynb
"""

import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "notebooks")
NOTEBOOKS = ("frontier.ipynb", "dpo_bandit.ipynb")


def execute(name, parameters=None):
    """Run notebooks/<name> in a fresh kernel with cwd = notebooks/; `parameters` replaces the
    source of the cell tagged "parameters". Returns the executed notebook."""
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    if parameters is not None:
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        cell.source = parameters
    # the notebook's own plotting backend (inline), so that every figure is really drawn
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOK_DIR}})
    client.execute(env=env)
    return nb


def text_output(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream")


def test_dpo_bandit_notebook_runs():
    nb = execute("dpo_bandit.ipynb")
    assert "all checks passed" in text_output(nb)


def test_frontier_notebook_runs_with_default_parameters():
    # runs/tiny/frontier.jsonl if the tiny sweep has run, else the example it falls back to
    execute("frontier.ipynb")


def test_frontier_notebook_on_the_example_file():
    nb = execute("frontier.ipynb", parameters='FRONTIER = "example_frontier.jsonl"')
    out = text_output(nb)
    assert "using the tiny-preset example instead" not in out
    assert "example_frontier.jsonl" in out and "best-of-16" in out


def test_frontier_notebook_falls_back_to_the_example(tmp_path):
    missing = str(tmp_path / "no_such_frontier.jsonl")
    nb = execute("frontier.ipynb", parameters=f"FRONTIER = {missing!r}")
    assert "using the tiny-preset example instead" in text_output(nb)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_saved_without_outputs(name):
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.outputs or c.execution_count is not None)]
    assert not dirty, (f"{name}: cells {dirty} hold outputs; strip them with "
                       f"python tests/test_notebooks.py notebooks/{name}")
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == (1 if name == "frontier.ipynb" else 0)


def strip(path):
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
        c.metadata.pop("execution", None)
    nbformat.write(nb, path)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        strip(p)
