"""The long checks, run by CI with `python -m pytest -m slow`: the tiny preset end to end (the
project's integration test) and sft.py / dpo.py under torchrun with two CPU processes."""

import json
import os
import subprocess
import sys
import time

import pytest

from utils import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, **kw)


@pytest.mark.slow
def test_tiny_preset_end_to_end(tmp_path):
    out = tmp_path / "tiny"
    t0 = time.time()
    p = run(["frontier.py", "--preset", "tiny", "--out_dir", str(out)], timeout=3600)
    minutes = (time.time() - t0) / 60
    assert p.returncode == 0, p.stderr[-3000:]
    rows = read_jsonl(str(out / "frontier.jsonl"))
    methods = {r["method"] for r in rows}
    assert methods == {"SFT", "DPO", "Unlikelihood", "Preferred-FT", "PPO", "PPO-GT",
                       "Best-of-N"}, methods
    assert (out / "frontier.png").stat().st_size > 10_000
    sft = next(r for r in rows if r["method"] == "SFT")
    assert sft["kl"] == 0.0 and 0.2 < sft["reward"] < 0.8  # mixed sentiment: room to improve
    for r in rows:  # the exact sequence KL of sampled completions is a sum of KLs: >= 0
        assert r["kl"] >= -1e-4, r
    best_dpo = max(r["reward"] for r in rows if r["method"] == "DPO")
    assert best_dpo > sft["reward"] + 0.2  # DPO clearly raises the ground-truth reward
    print(f"tiny preset: {minutes:.1f} min, {len(rows)} frontier points")
    assert minutes < 20  # the tiny preset is meant to run within 20 minutes on 2 CPU cores

    # a second call finds every step done and only redraws
    t0 = time.time()
    p = run(["frontier.py", "--preset", "tiny", "--out_dir", str(out)], timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("done, skipped") == 13, p.stdout
    assert len(read_jsonl(str(out / "frontier.jsonl"))) == len(rows)


def torchrun(script, args, nproc):
    cmd = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(29500 + os.getpid() % 1000), script, *args]
    env_threads = dict(OMP_NUM_THREADS="1")
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_threads)
    return subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def losses(folder):
    return [(r["step"], r.get("loss/train"), r.get("loss/eval"))
            for r in read_jsonl(os.path.join(folder, "log.jsonl"))]


@pytest.mark.slow
def test_torchrun_matches_single_process(tmp_path):
    """Two gloo processes with the same global batch follow the single-process loss curve."""
    sft_args = ["--init", "scratch", "--dataset", "synthetic", "--steps", "8", "--batch_size", "16",
                "--micro_batch", "4", "--lr", "1e-3", "--warmup", "2", "--eval_every", "4",
                "--save_every", "4", "--device", "cpu"]
    single, multi = str(tmp_path / "sft1"), str(tmp_path / "sft2")
    assert run(["sft.py", *sft_args, "--out_dir", single]).returncode == 0
    p = torchrun("sft.py", [*sft_args, "--out_dir", multi], 2)
    assert p.returncode == 0, p.stderr[-3000:]
    for a, b in zip(losses(single), losses(multi), strict=True):
        assert a[0] == b[0]
        for x, y in zip(a[1:], b[1:]):
            assert (x is None) == (y is None) and (x is None or abs(x - y) < 1e-4), (a, b)

    # DPO on pairs sampled from that SFT model
    pairs = tmp_path / "pairs.jsonl"
    rows = []
    for i in range(48):
        prompt = [3 + i % 7, 10 + i % 5]
        rows.append(dict(prompt_ids=prompt, chosen_ids=[20 + i % 9, 30, 40],
                         rejected_ids=[50 + i % 4, 60], prompt="", chosen="", rejected="",
                         reward_chosen=1.0, reward_rejected=0.0))
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dpo_args = ["--init", single, "--pairs", str(pairs), "--steps", "4", "--batch_size", "16",
                "--micro_batch", "4", "--lr", "1e-3", "--warmup", "1", "--eval_size", "8",
                "--eval_every", "2", "--save_every", "2", "--device", "cpu"]
    single, multi = str(tmp_path / "dpo1"), str(tmp_path / "dpo2")
    assert run(["dpo.py", *dpo_args, "--out_dir", single]).returncode == 0
    p = torchrun("dpo.py", [*dpo_args, "--out_dir", multi], 2)
    assert p.returncode == 0, p.stderr[-3000:]
    for a, b in zip(losses(single), losses(multi), strict=True):
        for x, y in zip(a[1:], b[1:]):
            assert (x is None) == (y is None) and (x is None or abs(x - y) < 1e-4), (a, b)
