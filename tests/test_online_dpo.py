"""online/dpo.py: DPO on pairs sampled from the current policy. With no refresh (k = infinity) it
is offline DPO on its one pool, step for step; with a refresh every k steps its pools come from
the policy as it trains, labelled by the learned RM or the ground truth; a killed run resumes on
the pool it was training on; frontier.py --online plans it with DPO's settings."""

import dataclasses
import os

import pytest
import torch
from test_pipeline import assert_resume_identical

import dpo
import evaluate
import frontier
import reward
from data import load_prefixes, split_pairs
from dpo import DPOConfig
from model import GPT
from reward import RMConfig

from online import dpo as online
from plumbing.presets import PRESETS
from plumbing.utils import list_checkpoints, read_jsonl


def online_cfg(pipeline, out, **kw):
    base = dict(out_dir=str(out), init=pipeline.sft, pairs=pipeline.pairs, reward="gt",
                ground_truth=pipeline.gt, dataset="synthetic", n_prompts=64, pool_prompts=8,
                steps=6, batch_size=8, micro_batch=4, lr=2e-4, warmup=2, eval_size=0,
                save_every=3, refresh_every=0, device="cpu")
    return online.OnlineDPOConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def rm(pipeline, tmp_path_factory):
    """A Bradley-Terry reward model on the pipeline's pairs (20 steps): the labeller of --reward
    rm, as PPO's RM is trained on the same pairs in the sweep."""
    out = str(tmp_path_factory.mktemp("online") / "rm")
    reward.train(RMConfig(out_dir=out, init=pipeline.sft, objective="bt", pairs=pipeline.pairs,
                          epochs=1, batch_size=16, micro_batch=16, lr=1e-3, warmup=2,
                          eval_size=32, eval_every=10, save_every=100, device="cpu"))
    return out


def weights(run_dir):
    return GPT.from_pretrained(list_checkpoints(run_dir)[-1][1]).state_dict()


def test_no_refresh_is_offline_dpo_on_its_first_pool(pipeline, tmp_path):
    """k = infinity (refresh_every 0): one pool, sampled by the SFT model at step 1, is all it
    trains on; offline dpo.py on that pool (the same seed, batches and settings) takes the same
    steps: the same losses and bit-identical weights."""
    cfg = online_cfg(pipeline, tmp_path / "online")
    log = online.main(cfg)
    pool_file = os.path.join(cfg.out_dir, "pools", "step_000001.jsonl")
    pool = read_jsonl(pool_file)
    assert len(pool) > cfg.batch_size and sorted(os.listdir(os.path.dirname(pool_file))) == [
        "step_000001.json", "step_000001.jsonl"]
    assert [r["step"] for r in log if "pool/pairs" in r] == [1]  # sampled once
    offline = DPOConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DPOConfig)})
    offline = dataclasses.replace(offline, out_dir=str(tmp_path / "offline"), pairs=pool_file)
    log_off = dpo.main(offline)
    keys = ("loss/train", "rewards/accuracy", "rewards/margins", "grad_norm", "tokens")
    assert [[r[k] for k in keys] for r in log] == [[r[k] for k in keys] for r in log_off]
    a, b = weights(cfg.out_dir), weights(offline.out_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the training moved the weights: the equality is not that of two untouched models
    sft = GPT.from_pretrained(pipeline.sft).state_dict()
    assert not all(torch.equal(a[k], sft[k]) for k in a)


def test_refresh_samples_fresh_pools_from_the_training_policy(pipeline, rm, tmp_path):
    """refresh_every 2 over 6 steps: pools at steps 1, 3 and 5 (each logged with its size and the
    tokens sampled), other prompts and other completions each time; labelled by the learned RM,
    the chosen completion is the one the RM scores higher."""
    cfg = online_cfg(pipeline, tmp_path / "rm", reward="rm", rm=rm, refresh_every=2,
                     save_every=2)
    log = online.main(cfg)
    fresh = [r for r in log if "pool/pairs" in r]
    assert [r["step"] for r in fresh] == [1, 3, 5]
    assert all(r["tokens/sampled"] > 0 and r["pool/pairs"] > 0 for r in fresh)
    assert all("tokens/sampled" not in r for r in log if r not in fresh)
    # the last pool is the one kept: a resume starts after the checkpoint at step 4, on it
    assert sorted(os.listdir(os.path.join(cfg.out_dir, "pools"))) == [
        "step_000005.json", "step_000005.jsonl"]
    last = read_jsonl(os.path.join(cfg.out_dir, "pools", "step_000005.jsonl"))
    assert all(r["reward_chosen"] > r["reward_rejected"] for r in last)
    first = online_cfg(pipeline, tmp_path / "first", reward="rm", rm=rm, refresh_every=2,
                       steps=2, save_every=2)
    online.main(first)
    pool1 = read_jsonl(os.path.join(first.out_dir, "pools", "step_000001.jsonl"))
    assert {tuple(r["prompt_ids"]) for r in pool1} != {tuple(r["prompt_ids"]) for r in last}
    assert evaluate.describe_run(cfg.out_dir) == ("Online DPO", "beta", 0.1)
    assert evaluate.describe_run(first.out_dir) == ("Online DPO", "beta", 0.1)


def test_resume_mid_pool_is_bit_identical(pipeline, tmp_path, monkeypatch):
    """Pools start at steps 1 and 4, checkpoints at 2, 4, 6: killed at step 5 the run resumes
    from step 4's checkpoint, on the pool sampled at step 4 (read back, not sampled again by
    another policy), and ends as the uninterrupted run."""
    cfg = online_cfg(pipeline, "", refresh_every=3, save_every=2, eval_size=16, eval_every=2)
    assert_resume_identical(online, online.main, cfg, tmp_path, monkeypatch)
    log = read_jsonl(os.path.join(tmp_path, "B", "log.jsonl"))
    assert [r["step"] for r in log if "pool/pairs" in r] == [1, 4]  # step 5 read step 4's pool


def test_resume_at_a_pool_sampled_after_the_checkpoint_logs_its_statistics(pipeline, tmp_path,
                                                                           monkeypatch):
    """Pools start at steps 1, 3, 5, checkpoints at 2 and 4: killed at step 5, after its pool was
    written and its row logged, the run resumes from step 4 and reads that pool back; its log row
    at step 5 still has the pool's size, score and tokens sampled, as the uninterrupted run's."""
    cfg = online_cfg(pipeline, "", refresh_every=2, save_every=2)
    assert_resume_identical(online, online.main, cfg, tmp_path, monkeypatch)
    log = read_jsonl(os.path.join(tmp_path, "B", "log.jsonl"))
    assert [r["step"] for r in log if "tokens/sampled" in r] == [1, 3, 5]


def test_pool_prompts_are_never_held_out_prompts(pipeline, tmp_path):
    """The held-out pairs (the offline file's split, on which early stopping is decided) have
    prompts that no pool samples from: the training prefixes loaded are the pairs file's 96, the
    held-out ones among them, and a pool of 96 prompts covers every prompt left, none held out."""
    cfg = online_cfg(pipeline, tmp_path / "held", eval_size=16, refresh_every=1, steps=2,
                     n_prompts=96, pool_prompts=96)
    online.main(cfg)
    rows = read_jsonl(pipeline.pairs)
    _, eval_idx = split_pairs(rows, cfg.eval_size, cfg.split_seed)
    held = {tuple(rows[i]["prompt_ids"]) for i in eval_idx}
    loaded = load_prefixes("synthetic", "train", cfg.n_prompts, cfg.seed, pipeline.tok)
    assert held and held <= {tuple(p) for p in loaded}  # the filter has something to remove
    log = read_jsonl(os.path.join(cfg.out_dir, "log.jsonl"))
    assert [r["step"] for r in log if "pool/pairs" in r] == [1, 2]
    pool = {tuple(r["prompt_ids"]) for r in
            read_jsonl(os.path.join(cfg.out_dir, "pools", "step_000002.jsonl"))}
    assert len(pool) > 60 and not held & pool


def test_online_refuses_an_unknown_reward(pipeline, tmp_path):
    with pytest.raises(ValueError, match="--reward must be rm or gt"):
        online.main(online_cfg(pipeline, tmp_path / "x", reward="judge"))
    assert not os.path.exists(tmp_path / "x")


def test_frontier_online_plans_both_labellers_with_dpo_settings():
    steps = frontier.plan(frontier.FrontierConfig(preset="tiny", online=True))
    runs = {os.path.basename(c.out_dir): c for _, _, c in steps if hasattr(c, "refresh_every")}
    betas = PRESETS["tiny"].betas
    assert sorted(runs) == sorted([f"online_dpo_beta{b}" for b in betas]
                                  + [f"online_dpo_gt_beta{b}" for b in betas])
    dpo_cfg = next(c for _, _, c in steps if os.path.basename(getattr(c, "out_dir", ""))
                   == f"dpo_beta{betas[0]}")
    c = runs[f"online_dpo_gt_beta{betas[0]}"]
    assert c.reward == "gt" and runs[f"online_dpo_beta{betas[0]}"].reward == "rm"
    for field in ("steps", "batch_size", "lr", "warmup", "patience", "eval_every", "eval_size",
                  "save_every", "pairs", "init", "optimizer"):
        assert getattr(c, field) == getattr(dpo_cfg, field), field
    final = steps[-1][2]
    assert all(r.out_dir in final.runs for r in runs.values())  # evaluated on the frontier
    assert not any(hasattr(c, "refresh_every") for _, _, c in
                   frontier.plan(frontier.FrontierConfig(preset="tiny")))  # off by default
