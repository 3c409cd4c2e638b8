"""report.sweep.report: what each run of a sweep learned, beside where its KL ended."""

import json
import os
import re
import subprocess
import sys

import pytest

from report import figure, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def make_sweep(root):
    configs = {"dpo_beta0.1": dict(loss="dpo", beta=0.1, alpha=1.0),
               "rm": dict(objective="bt"), "sft": dict(init="scratch"),
               "ppo_kl3.0": dict(reward="rm", target_kl=3.0)}
    logs = {"dpo_beta0.1": [{"step": 0, "loss/eval": 0.69, "eval/rewards/accuracy": 0.0},
                            {"step": 5, "loss/train": 0.5, "tokens": 2e6},
                            {"step": 10, "loss/eval": 0.41, "eval/rewards/accuracy": 0.84}],
            "rm": [{"step": 10, "loss/eval": 0.2, "eval/rm/accuracy": 0.93}],
            "sft": [{"step": 10, "loss/eval": 1.0}],
            "ppo_kl3.0": [{"step": 1, "kl/seq": 1.0, "tokens": 4e6, "tokens/sampled": 1e6},
                          {"step": 2, "kl/seq": 1.0, "tokens": 4e6, "tokens/sampled": 1e6}]}
    for name, c in configs.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        with open(os.path.join(root, name, "run_config.json"), "w") as f:
            json.dump(c, f)
        write(os.path.join(root, name, "log.jsonl"), logs[name])
    row = lambda method, ckpt, step, kl, **kw: dict(method=method, checkpoint=ckpt, step=step,
                                                   kl=kl, reward=0.5, **kw)
    write(os.path.join(root, "frontier.jsonl"), [
        row("SFT", "sft/step_000010", 0, 0.0), row("Best-of-N", "sft/step_000010", 0, 1.8,
                                                   best_of=16),
        row("DPO", "dpo_beta0.1/step_000010", 10, 2.5),
        row("DPO", "dpo_beta0.1/step_000005", 5, 1.5),
        row("PPO", "ppo_kl3.0/step_000001", 1, 3.1)])


def test_report_reads_accuracy_and_kl(tmp_path):
    make_sweep(str(tmp_path))
    rows = {r["run"]: r for r in sweep.report(str(tmp_path))}
    assert set(rows) == {"dpo_beta0.1", "rm", "ppo_kl3.0"}  # sft: nothing learned from pairs
    d = rows["dpo_beta0.1"]
    assert (d["method"], d["param"], d["value"]) == ("DPO", "beta", 0.1)
    assert d["heldout_accuracy"] == 0.84 and d["loss_eval"] == 0.41  # the last evaluation
    assert (d["kl_before"], d["kl_last"]) == (1.5, 2.5)  # ordered by step, not by file order
    assert rows["rm"]["heldout_accuracy"] == 0.93 and rows["rm"]["kl_last"] is None
    assert rows["ppo_kl3.0"]["kl_last"] == 3.1 and rows["ppo_kl3.0"]["kl_before"] is None
    assert (d["tokens"], d["sampled"]) == (2e6, None)  # compute: summed over the log's steps
    assert (rows["ppo_kl3.0"]["tokens"], rows["ppo_kl3.0"]["sampled"]) == (8e6, 2e6)


def test_report_command(tmp_path):
    make_sweep(str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "report.sweep", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "dpo_beta0.1" in r.stdout and "1.500 -> 2.500" in r.stdout
    # the compute per method: PPO's 8M tokens forward + backward and 2M sampled
    assert re.search(r"PPO\s+1\s+8\.00\s+2\.00", r.stdout), r.stdout
    r = subprocess.run([sys.executable, "-m", "report.sweep", str(tmp_path / "nothing")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error:")


def test_seed_envelopes_by_hand(tmp_path):
    r = lambda m, seed, kl, reward: dict(method=m, seed=seed, kl=kl, reward=reward)
    rows = [r("SFT", None, 0.0, 0.5),
            # DPO, seed 0: two settings; seed 1: one setting
            r("DPO", 0, 0.5, 0.7), r("DPO", 0, 1.5, 0.8), r("DPO", 0, 2.5, 0.95),
            r("DPO", 1, 0.8, 0.6), r("DPO", 1, 2.0, 0.9),
            r("PPO", 0, 2.5, 0.9)]
    t = figure.seed_envelopes(rows, (1, 2, 3))
    assert "SFT" not in t
    mean, se, n = t["DPO"][1]
    assert n == 2 and abs(mean - 0.65) < 1e-12 and abs(se - 0.05) < 1e-12  # (0.7, 0.6)
    mean, se, n = t["DPO"][2]
    assert n == 2 and abs(mean - 0.85) < 1e-12 and abs(se - 0.05) < 1e-12  # (0.8, 0.9)
    mean, se, n = t["DPO"][3]
    assert n == 2 and abs(mean - 0.925) < 1e-12 and abs(se - 0.025) < 1e-12  # (0.95, 0.9)
    assert t["PPO"][1] == (None, None, 0) and t["PPO"][3] == (0.9, None, 1)
    path = tmp_path / "frontier.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    assert os.path.getsize(figure.plot_frontier(str(path))) > 0  # the band is drawn


def test_frontier_figure_axes_edge_points_and_legend(tmp_path):
    """The paper's 0-20 nats axis and a 0-5 nats panel; runs past an axis are drawn at its edge
    and counted; every method is in the legend, in full colour; the optimum is the limit."""
    r = lambda m, kl, reward, seed=0: dict(method=m, seed=seed, kl=kl, reward=reward)
    rows = [r("SFT", 0.0, 0.5, None), r("DPO", 1.0, 0.8), r("DPO", 3.0, 0.9), r("DPO", 50.0, 0.95),
            r("DPO", 330.0, 0.2), r("Unlikelihood", 7.0, 0.6), r("PPO", 4.0, 0.97),
            r("Best-of-N", 1.84, 0.97, None)]
    opt = [dict(kl=0.0, reward=0.5, M=64, trusted=True), dict(kl=1.0, reward=0.9, M=64,
                                                             trusted=True),
           dict(kl=4.0, reward=0.99, M=64, trusted=False)]
    assert figure.beyond(rows, 20) == {"DPO": 2}
    assert figure.beyond(rows, 5) == {"DPO": 2, "Unlikelihood": 1}
    fig = figure.frontier_figure(rows, opt, "T")
    main, zoom = fig.axes[:2]
    assert main.get_xlim() == (0, 20) and zoom.get_xlim() == (0, 5)
    assert "2 points beyond" in main.get_title() and "3 points beyond" in zoom.get_title()
    # the points past the edge sit on it: one scatter of 2 triangles at x = 20 in the main panel
    edge = [c.get_offsets() for c in main.collections
            if len(c.get_offsets()) and (c.get_offsets()[:, 0] == 20).all()]
    assert [len(e) for e in edge] == [2]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    for method in ("SFT", "DPO", "Unlikelihood", "PPO", "Best-of-N"):
        assert any(t.startswith(method) for t in labels), (method, labels)
    assert "DPO (2 beyond 20 nats)" in labels and any("the limit" in t for t in labels)
    assert all(h.get_alpha() in (None, 1.0) for h in fig.legends[0].legend_handles)
    assert len(figure.frontier_figure(rows, opt, zoom=None).axes) == 1
    with pytest.raises(ValueError, match="zoomed panel"):
        figure.frontier_figure(rows, opt, zoom=30.0)
    path = tmp_path / "frontier.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    p = subprocess.run([sys.executable, "evaluate.py", "plot", str(path), "--xmax", "10",
                        "--zoom", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and os.path.getsize(tmp_path / "frontier.png") > 10_000, p.stderr


def test_the_optimum_legend_says_its_estimator_and_trusted_range():
    """Reference rows (with or without an estimator field): M in the legend. Mixture rows: how far
    the line is trusted, the KL of its last trusted row; solid up to it, dotted beyond."""
    rows = [dict(method="SFT", seed=None, kl=0.0, reward=0.5), dict(method="PPO", seed=0, kl=4.0,
                                                                   reward=0.97)]
    mixture = [dict(estimator="mixture", kl=kl, reward=rew, M=64, trusted=kl < 7)
               for kl, rew in ((0.0, 0.5), (2.0, 0.95), (6.24, 0.985), (7.5, 0.986))]
    fig = figure.frontier_figure(rows, mixture, zoom=None)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "optimum π* (mixture IS, trusted to 6.2 nats)" in labels
    assert "optimum, past its trusted KL" in labels and not any("M = 64" in t for t in labels)
    solid, dotted = [line for line in fig.axes[0].get_lines() if line.get_color() == "black"]
    assert list(solid.get_xdata()) == [0.0, 2.0, 6.24] and list(dotted.get_xdata()) == [6.24, 7.5]
    assert dotted.get_linestyle() == ":"
    for estimator in ({}, {"estimator": "reference"}):
        reference = [dict(kl=kl, reward=0.5 + kl / 10, M=64, trusted=kl <= 1.0, **estimator)
                     for kl in (0.0, 1.0, 3.0)]
        labels = [t.get_text() for t in figure.frontier_figure(rows, reference, zoom=None)
                  .legends[0].get_texts()]
        assert "optimum π* (the limit; estimated, M = 64)" in labels
