"""The pipeline end to end on the synthetic corpus, CPU, in-process: SFT from scratch -> a GPT-2
label classifier as ground truth -> pairs -> Bradley-Terry RM -> DPO / Unlikelihood / PPO ->
evaluation.

One tiny pipeline is built once per session (conftest's `pipeline`: SFT, the ground truth, the
pairs); each test checks one promise of the scripts on it: the stages learn what they should (the
RM ranks, the classifier classifies, SFT lowers the held-out loss, DPO, PPO-GT and PPO on the
learned reward model raise the ground-truth reward), the files have their formats, a killed run
resumed ends bit-identical to an uninterrupted one, and the CLIs work."""

import dataclasses
import math
import os
import random
import subprocess
import sys
import types

import pytest
import torch
from conftest import without_timing
from forkrun import run_all

import dpo
import evaluate
import pairs
import ppo
import reward
import sft
from data import (
    PROTOCOL,
    load_reviews,
    load_tokenizer,
    make_prefixes,
    pair_row,
)
from dpo import DPOConfig
from evaluate import EvalConfig
from model import GPT, gpt_folder
from ppo import PPOConfig
from reward import RMConfig
from sft import SFTConfig

from plumbing import runs
from plumbing.runs import log_row
from plumbing.utils import list_checkpoints, read_jsonl, write_jsonl
from synthetic.reviews import _opinion

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def measure(pipeline):
    """measure(checkpoint, seed=0) -> ground-truth rewards (128,) of a policy's completions for
    128 held-out test prefixes, sampled under the protocol (evaluate.sample_and_measure)."""
    tok = pipeline.tok
    prefixes = make_prefixes(load_reviews("synthetic", "test")[0], 128, PROTOCOL.test_seed, tok)
    scorer = reward.load_ground_truth(pipeline.gt)
    ref = GPT.from_pretrained(pipeline.sft_ckpt).eval()

    def run(path, seed=0):
        policy = GPT.from_pretrained(gpt_folder(path)).eval()
        comps = evaluate.sample_and_measure(policy, ref, prefixes, tok, 64, seed, "cpu")[0]
        return scorer([tok.decode(p + c) for p, c in zip(prefixes, comps)])
    return run


def easy_pairs(tok, n, seed):
    """Pairs in the pairs-file format that a reward model can learn at once: prompts are prefixes
    of synthetic reviews, chosen completions two positive sentences, rejected two negative ones."""
    rng = random.Random(seed)
    prompts = make_prefixes(load_reviews("synthetic", "train")[0], n, seed, tok)
    rows = []
    for prompt in prompts:
        chosen = " " + " ".join(_opinion(rng, 1) for _ in range(2))
        rejected = " " + " ".join(_opinion(rng, 0) for _ in range(2))
        rows.append(pair_row(prompt, tok.encode(chosen) + [tok.eos_id],
                             tok.encode(rejected) + [tok.eos_id], 1.0, 0.0, tok))
    return rows


@pytest.fixture(scope="session")
def bt_rm(pipeline):
    """A Bradley-Terry reward model (reward.train objective="bt") on 320 easy pairs, from SFT."""
    folder = pipeline.root / "bt"
    folder.mkdir()
    path = str(folder / "pairs.jsonl")
    write_jsonl(path, easy_pairs(pipeline.tok, 320, seed=0))
    out = str(folder / "rm")
    log = reward.train(RMConfig(out_dir=out, init=pipeline.sft, objective="bt", pairs=path,
                                epochs=2, batch_size=16, micro_batch=16, lr=1e-3, warmup=5,
                                eval_size=64, eval_every=10, save_every=100, device="cpu"))
    return types.SimpleNamespace(out=out, log=log, pairs=path)


@pytest.fixture(scope="session")
def dpo_run(pipeline):
    """DPO (beta 0.1) on the pipeline's pairs: 30 steps of 32 pairs, a checkpoint every 15."""
    out = str(pipeline.root / "dpo")
    log = dpo.main(DPOConfig(out_dir=out, init=pipeline.sft, pairs=pipeline.pairs, steps=30,
                             batch_size=32, micro_batch=32, lr=2e-4, warmup=5, eval_size=32,
                             eval_every=15, save_every=15, device="cpu"))
    return types.SimpleNamespace(out=out, log=log)


def interrupt_after(n_calls, fn):
    """fn, wrapped to raise KeyboardInterrupt (a kill) right after its n-th call returns."""
    calls = [0]

    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        calls[0] += 1
        if calls[0] == n_calls:
            raise KeyboardInterrupt
        return out
    return wrapper


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def assert_resume_identical(module, main, cfg, tmp_path, monkeypatch):
    """Run cfg uninterrupted in A/; run it in B/ killed one step after its second checkpoint (that
    step logged, not saved), then again on B/: the final weights are bit-identical and the logs
    equal (timing fields aside)."""
    a = dataclasses.replace(cfg, out_dir=str(tmp_path / "A"))
    b = dataclasses.replace(cfg, out_dir=str(tmp_path / "B"))
    main(a)
    kill_step = 2 * cfg.save_every + 1

    def log_then_die(out_dir, row, history=None):
        log_row(out_dir, row, history)
        if row.get("step") == kill_step:
            raise KeyboardInterrupt
    with monkeypatch.context() as mp:
        mp.setattr(runs, "log_row", log_then_die)
        with pytest.raises(KeyboardInterrupt):
            main(b)
    assert not os.path.exists(os.path.join(b.out_dir, "done"))
    assert [s for s, _ in list_checkpoints(b.out_dir)] == [cfg.save_every, 2 * cfg.save_every]
    assert read_jsonl(os.path.join(b.out_dir, "log.jsonl"))[-1]["step"] == kill_step
    history = main(b)
    last_a, last_b = list_checkpoints(a.out_dir)[-1], list_checkpoints(b.out_dir)[-1]
    assert last_a[0] == last_b[0] == getattr(cfg, "steps", last_a[0])
    for name in os.listdir(last_a[1]):
        assert read_bytes(os.path.join(last_a[1], name)) == \
            read_bytes(os.path.join(last_b[1], name)), name
    log_a = read_jsonl(os.path.join(a.out_dir, "log.jsonl"))
    log_b = read_jsonl(os.path.join(b.out_dir, "log.jsonl"))
    assert [r["step"] for r in log_b] == [r["step"] for r in log_a]
    assert without_timing(log_b) == without_timing(log_a)
    assert without_timing(history) == without_timing(log_a)  # main returns the whole history
    assert os.path.exists(os.path.join(b.out_dir, "done"))


# ----------------------------------------------------------------------------- reward


def test_bt_reward_model_learns_easy_pairs(bt_rm):
    log = read_jsonl(os.path.join(bt_rm.out, "log.jsonl"))
    assert log == bt_rm.log
    accs = [r["eval/rm/accuracy"] for r in log if "eval/rm/accuracy" in r]
    assert accs and max(accs) > 0.9, accs
    assert log[0]["loss/train"] == pytest.approx(math.log(2), abs=0.02)  # the head starts small
    best = os.path.join(bt_rm.out, "best")
    for name in ("reward_head.json", "reward_head.safetensors", "model.safetensors",
                 "config.json", "compact_vocab.json"):
        assert os.path.isfile(os.path.join(best, name)), name
    rm = reward.load_reward_model(bt_rm.out)  # the run folder stands for its best checkpoint
    assert rm.kind == "bt"
    assert reward.reward_folder(bt_rm.out) == best
    # it is no classifier: the ground-truth entry point refuses it
    with pytest.raises(ValueError, match="Bradley-Terry"):
        reward.load_ground_truth(bt_rm.out)


def test_learned_rm_scores_texts_as_it_was_trained(pipeline, bt_rm):
    """PPO and best-of-N score the sampled token ids (GPTScorer.score_ids); texts (the scorer
    called, as reward.py score does) must be ranked as well as the ids the RM was trained on
    (pairs.py's completions end with the EOS the policy sampled, as these do)."""
    rows = easy_pairs(pipeline.tok, 64, seed=1)
    rm = reward.load_reward_model(bt_rm.out)
    with torch.no_grad():  # as trained: the training loss's own path, held-out accuracy
        _, correct = reward.rm_loss(reward.RMConfig(objective="bt"), rm.model, rows,
                                    pipeline.tok.eos_id)
    assert correct / len(rows) > 0.9
    by_ids = [rm.score_ids([r["prompt_ids"] + r[k] for r in rows])
              for k in ("chosen_ids", "rejected_ids")]
    assert (by_ids[0] > by_ids[1]).float().mean() > 0.9
    tok = pipeline.tok
    chosen = rm([tok.decode(r["prompt_ids"] + r["chosen_ids"]) for r in rows])
    rejected = rm([tok.decode(r["prompt_ids"] + r["rejected_ids"]) for r in rows])
    assert (chosen > rejected).float().mean() > 0.9, (chosen - rejected)


def test_label_classifier_separates_held_out_reviews(pipeline):
    assert pipeline.gt_log[-1]["eval/rm/accuracy"] > 0.8
    scorer = reward.load_ground_truth(pipeline.gt)
    assert scorer.kind == "label"
    texts, labels = load_reviews("synthetic", "test")
    texts, labels = texts[-300:], torch.tensor(labels[-300:])  # held out from training
    p = scorer(texts)
    assert p.shape == (300,) and bool(((p >= 0) & (p <= 1)).all())
    assert p[labels == 1].mean() - p[labels == 0].mean() > 0.4
    assert ((p > 0.5).long() == labels).float().mean() > 0.8


# ----------------------------------------------------------------------------- SFT


def test_sft_lowers_held_out_loss_and_samples_mixed_rewards(pipeline, measure):
    evals = [(r["step"], r["loss/eval"]) for r in pipeline.sft_log if "loss/eval" in r]
    assert evals[0][0] == 0 and evals[-1][0] == pipeline.sft_cfg.steps
    assert evals[-1][1] < 0.5 * evals[0][1], evals
    assert [s for s, _ in list_checkpoints(pipeline.sft)] == [75, 150]
    rewards = measure(pipeline.sft)
    assert 0.2 < rewards.mean().item() < 0.8, rewards.mean()
    assert rewards.std().item() > 0.1  # preference training has room to move


def test_preferred_ft_trains_on_chosen_completions(pipeline, tmp_path):
    out = str(tmp_path / "pft")
    log = sft.main(SFTConfig(out_dir=out, init=pipeline.sft, pairs=pipeline.pairs, steps=4,
                             batch_size=16, micro_batch=8, lr=1e-3, warmup=1, eval_every=4,
                             eval_size=32, save_every=4, device="cpu"))
    evals = [r["loss/eval"] for r in log if "loss/eval" in r]
    assert len(evals) == 2 and all(math.isfinite(v) for v in evals)
    assert [s for s, _ in list_checkpoints(out)] == [4]
    assert load_tokenizer(list_checkpoints(out)[-1][1]).vocab == pipeline.tok.vocab
    assert evaluate.describe_run(out) == ("Preferred-FT", "seed", 0)


# ----------------------------------------------------------------------------- pairs


def test_pairs_file(pipeline):
    rows = read_jsonl(pipeline.pairs)
    n = pipeline.pairs_cfg.n_prefixes
    per_prefix = {}
    for r in rows:
        per_prefix[r["prefix_index"]] = per_prefix.get(r["prefix_index"], 0) + 1
    assert set(per_prefix) <= set(range(n)) and max(per_prefix.values()) <= 6
    log = pipeline.pairs_log
    assert [r["step"] for r in log] == [1, 2, 3]
    assert sum(r["pairs"] for r in log) == len(rows)
    assert len(rows) == 6 * n - sum(r["ties"] for r in log)
    tok = pipeline.tok
    for r in rows:
        assert r["reward_chosen"] > r["reward_rejected"]
        assert 0 <= r["reward_rejected"] and r["reward_chosen"] <= 1
        assert tok.decode(r["chosen_ids"]) == r["chosen"]
        assert tok.decode(r["rejected_ids"]) == r["rejected"]
        assert tok.decode(r["prompt_ids"]) == r["prompt"]
        assert PROTOCOL.min_prefix <= len(r["prompt_ids"]) <= PROTOCOL.max_prefix
        for ids in (r["chosen_ids"], r["rejected_ids"]):  # the protocol: <= 48 tokens, EOS ends
            assert 1 <= len(ids) <= PROTOCOL.max_new_tokens
            assert tok.eos_id not in ids[:-1]
            assert ids[-1] == tok.eos_id or len(ids) == PROTOCOL.max_new_tokens
        assert r["chosen_ids"] != r["rejected_ids"]
    # the rewards are the ground truth's scores of prefix + completion
    scorer = reward.load_ground_truth(pipeline.gt)
    some = rows[:16]
    again = scorer([tok.decode(r["prompt_ids"] + r["chosen_ids"]) for r in some])
    assert torch.allclose(again, torch.tensor([r["reward_chosen"] for r in some]), atol=1e-5)


def test_pairs_resume_after_kill_mid_chunk(pipeline, tmp_path, monkeypatch):
    cfg = dataclasses.replace(pipeline.pairs_cfg, out_dir=str(tmp_path / "pairs"))
    chunk = pipeline.pairs_cfg.chunk
    # pairs.py appends each prefix's pairs in one write: killed after the third chunk's 10th
    # prefix, the pairs of 2 chunks + 10 prefixes are on disk
    on_disk = [r for r in read_jsonl(pipeline.pairs) if r["prefix_index"] < 2 * chunk + 10]
    with monkeypatch.context() as mp:
        mp.setattr(pairs, "append_jsonl", interrupt_after(2 * chunk + 10, pairs.append_jsonl))
        with pytest.raises(KeyboardInterrupt):
            pairs.main(cfg)
    path = os.path.join(cfg.out_dir, "pairs.jsonl")
    assert read_jsonl(path) == on_disk and len(on_disk) > sum(r["pairs"]
                                                              for r in pipeline.pairs_log[:2])
    assert [r["step"] for r in read_jsonl(os.path.join(cfg.out_dir, "log.jsonl"))] == [1, 2]
    history = pairs.main(cfg)
    assert read_bytes(path) == read_bytes(pipeline.pairs)
    assert without_timing(history) == without_timing(pipeline.pairs_log)


def test_pairs_resume_drops_torn_line(pipeline, tmp_path, monkeypatch):
    cfg = dataclasses.replace(pipeline.pairs_cfg, out_dir=str(tmp_path / "pairs"))
    with monkeypatch.context() as mp:  # killed right after the second chunk's log row
        mp.setattr(runs, "log_row", interrupt_after(2, runs.log_row))
        with pytest.raises(KeyboardInterrupt):
            pairs.main(cfg)
    path = os.path.join(cfg.out_dir, "pairs.jsonl")
    with open(path, "a") as f:  # a kill in the middle of writing a line
        f.write('{"prefix_index": 64, "prompt_ids": [1, 2], "chosen_ids": [3')
    with open(os.path.join(cfg.out_dir, "log.jsonl"), "a") as f:
        f.write('{"step": 3, "pairs"')
    pairs.main(cfg)
    assert read_bytes(path) == read_bytes(pipeline.pairs)
    assert without_timing(read_jsonl(os.path.join(cfg.out_dir, "log.jsonl"))) == \
        without_timing(pipeline.pairs_log)


# ----------------------------------------------------------------------------- DPO


def test_dpo_raises_ground_truth_reward(pipeline, dpo_run, measure):
    rows = [r for r in dpo_run.log if "loss/train" in r]
    assert len(rows) == 30 and [s for s, _ in list_checkpoints(dpo_run.out)] == [15, 30]
    assert dpo_run.log[0]["step"] == 0 and abs(dpo_run.log[0]["loss/eval"] - math.log(2)) < 1e-4
    assert rows[0]["loss/train"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference
    assert sum(r["loss/train"] for r in rows[-5:]) / 5 < math.log(2) - 0.05
    assert sum(r["rewards/margins"] for r in rows[-5:]) > 0
    sft_reward = measure(pipeline.sft).mean().item()
    dpo_reward = measure(dpo_run.out).mean().item()
    assert dpo_reward > sft_reward + 0.1, (sft_reward, dpo_reward)


def test_dpo_reference_logps_cached_and_exact(pipeline, tmp_path, monkeypatch):
    cache_dir = os.path.join(pipeline.pairs_dir, "ref_logps")
    base = dict(init=pipeline.sft, pairs=pipeline.pairs, steps=1, batch_size=8, micro_batch=8,
                lr=1e-4, warmup=1, eval_size=0, device="cpu")
    dpo.main(DPOConfig(out_dir=str(tmp_path / "beta0.1"), beta=0.1, **base))
    files = os.listdir(cache_dir)
    assert len(files) == 1
    cache = os.path.join(cache_dir, files[0])
    mtime = os.stat(cache).st_mtime_ns
    loads = []
    real = dpo.GPT.from_pretrained

    def counting(path, *a, **k):
        loads.append(path)
        return real(path, *a, **k)
    monkeypatch.setattr(dpo.GPT, "from_pretrained", counting)
    dpo.main(DPOConfig(out_dir=str(tmp_path / "beta1"), beta=1.0, **base))
    monkeypatch.undo()
    assert len(loads) == 1, loads  # the policy only: no reference model was loaded
    assert os.listdir(cache_dir) == files and os.stat(cache).st_mtime_ns == mtime

    # cached values = a fresh computation (another cache folder, other micro-batches)
    rows = read_jsonl(pipeline.pairs)
    cached_c, cached_r = torch.load(cache)
    fresh = tmp_path / "fresh" / "pairs.jsonl"
    fresh.parent.mkdir()
    fresh.write_bytes(read_bytes(pipeline.pairs))
    c, r = dpo.reference_logps(pipeline.sft_ckpt, str(fresh), rows, pipeline.tok.eos_id, "cpu",
                               micro_batch=64)
    assert os.listdir(fresh.parent / "ref_logps")
    assert c.shape == r.shape == (len(rows),)
    model = GPT.from_pretrained(pipeline.sft_ckpt).eval()
    with torch.no_grad():
        parts = [dpo.concatenated_logps(model, rows[i: i + 7], pipeline.tok.eos_id)
                 for i in range(0, len(rows), 7)]
    c2, r2 = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    for x in (cached_c, c):
        assert torch.allclose(x, c2, atol=1e-5, rtol=1e-5)  # fp32: relative rounding
    for x in (cached_r, r):
        assert torch.allclose(x, r2, atol=1e-5, rtol=1e-5)
    assert bool((c2 < 0).all() and (r2 < 0).all())


def test_unlikelihood_trains(pipeline, tmp_path):
    """--loss unlikelihood --alpha A over-fits one batch: its loss falls, the rejected completions
    become less likely and the chosen ones more; the token-level form trains too."""
    path = str(tmp_path / "pairs32.jsonl")
    write_jsonl(path, read_jsonl(pipeline.pairs)[:32])  # batch 32: the same batch every step
    alpha = 0.5
    cfg = DPOConfig(out_dir=str(tmp_path / "ul"), init=pipeline.sft, pairs=path,
                    loss="unlikelihood", alpha=alpha, steps=8, batch_size=32, micro_batch=32,
                    lr=1e-4, warmup=2, eval_size=0, save_every=8, device="cpu")
    log = dpo.main(cfg)
    assert len(log) == 8 and all(math.isfinite(r["loss/train"]) for r in log)
    first, last = log[0], log[-1]
    assert first["loss/train"] == pytest.approx(
        -first["logps/chosen"] + alpha * first["logps/rejected"], rel=1e-5)
    assert last["loss/train"] < first["loss/train"] - 5, (first, last)
    assert last["logps/rejected"] < first["logps/rejected"] - 5
    assert last["logps/chosen"] > first["logps/chosen"]
    assert evaluate.describe_run(cfg.out_dir) == ("Unlikelihood", "alpha", alpha)

    # the token-level form (Welleck et al.): bounded below by -log pi(y_w), and it trains too
    cfg_tok = dataclasses.replace(cfg, out_dir=str(tmp_path / "ul_tok"),
                                  loss="unlikelihood_token")
    log = dpo.main(cfg_tok)
    assert len(log) == 8 and all(math.isfinite(r["loss/train"]) for r in log)
    assert all(r["loss/train"] >= -r["logps/chosen"] - 1e-3 for r in log)
    assert log[-1]["loss/train"] < log[0]["loss/train"] - 5
    assert log[-1]["logps/rejected"] < log[0]["logps/rejected"]
    assert [s for s, _ in list_checkpoints(cfg_tok.out_dir)] == [8]


def test_simpo_and_cdpo_train_and_are_named(pipeline, tmp_path):
    """--loss simpo over-fits one batch (its loss falls, the chosen completions' mean log-prob
    per token overtakes the rejected ones'); frontier's variants get their own method names."""
    path = str(tmp_path / "pairs32.jsonl")
    rows = read_jsonl(pipeline.pairs)[:32]
    write_jsonl(path, rows)
    cfg = DPOConfig(out_dir=str(tmp_path / "simpo"), init=pipeline.sft, pairs=path, loss="simpo",
                    beta=2.0, gamma_beta_ratio=0.5, steps=8, batch_size=32, micro_batch=32,
                    lr=1e-4, warmup=2, eval_size=0, save_every=8, device="cpu")
    log = dpo.main(cfg)
    assert len(log) == 8 and all(math.isfinite(r["loss/train"]) for r in log)
    assert log[-1]["loss/train"] < log[0]["loss/train"] - 0.1
    per_token = lambda r: (r["logps/chosen"] / sum(len(x["chosen_ids"]) for x in rows) * 32
                           - r["logps/rejected"] / sum(len(x["rejected_ids"]) for x in rows) * 32)
    assert per_token(log[-1]) > per_token(log[0])
    assert evaluate.describe_run(cfg.out_dir) == ("SimPO", "beta", 2.0)
    cdpo = dataclasses.replace(cfg, out_dir=str(tmp_path / "cdpo"), loss="dpo",
                               label_smoothing=0.1, beta=0.1, steps=2, save_every=2)
    dpo.main(cdpo)
    assert evaluate.describe_run(cdpo.out_dir) == ("cDPO", "beta", 0.1)


# ----------------------------------------------------------------------------- PPO


def test_ppo_gt_raises_ground_truth_reward(pipeline, measure, tmp_path):
    cfg = PPOConfig(out_dir=str(tmp_path / "ppo_gt"), init=pipeline.sft, reward="gt",
                    ground_truth=pipeline.gt, dataset="synthetic", n_prompts=512, steps=12,
                    batch_size=64, gen_batch=64, mini_batch=32, micro_batch=32, lr=2e-4,
                    normalize_score=True, horizon=640, save_every=6, device="cpu")
    log = ppo.main(cfg)
    assert [r["step"] for r in log] == list(range(1, 13))
    scores = [r["score/mean"] for r in log]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.05, scores
    sft_reward = measure(pipeline.sft).mean().item()
    ppo_reward = measure(cfg.out_dir).mean().item()
    assert ppo_reward > sft_reward + 0.1, (sft_reward, ppo_reward)
    assert log[0]["kl/seq"] == pytest.approx(0.0, abs=1e-5)  # the first rollout: policy = ref
    assert sum(r["kl/seq"] for r in log) / len(log) > 0
    assert all(r["kl/coef"] > 0 and math.isfinite(r["ppo/value_loss"]) for r in log)
    assert [s for s, _ in list_checkpoints(cfg.out_dir)] == [6, 12]
    last = list_checkpoints(cfg.out_dir)[-1][1]
    assert os.path.isfile(os.path.join(last, "value_head.safetensors"))
    assert evaluate.describe_run(cfg.out_dir) == ("PPO-GT", "target_kl", cfg.target_kl)


def test_ppo_with_learned_reward_model_raises_ground_truth_reward(pipeline, bt_rm, measure,
                                                                   tmp_path):
    """PPO on the Bradley-Terry RM (never on the ground truth): the learned reward it optimises
    rises, and so does the ground-truth reward of its completions (the RM learned what the ground
    truth rewards). PPO-GT's settings, half the iterations."""
    cfg = PPOConfig(out_dir=str(tmp_path / "ppo_rm"), init=pipeline.sft, reward="rm",
                    rm=bt_rm.out, dataset="synthetic", n_prompts=512, steps=6, batch_size=64,
                    gen_batch=64, mini_batch=32, micro_batch=32, lr=2e-4, normalize_score=True,
                    horizon=640, save_every=3, device="cpu")
    log = ppo.main(cfg)
    assert [r["step"] for r in log] == list(range(1, 7))
    assert all(math.isfinite(v) for r in log for v in r.values())
    scores = [r["score/mean"] for r in log]  # the learned RM's scores of the rollouts
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3, scores
    sft_reward = measure(pipeline.sft).mean().item()
    ppo_reward = measure(cfg.out_dir).mean().item()
    assert ppo_reward > sft_reward + 0.1, (sft_reward, ppo_reward)
    assert log[0]["kl/seq"] == pytest.approx(0.0, abs=1e-5)  # the first rollout: policy = ref
    assert [s for s, _ in list_checkpoints(cfg.out_dir)] == [3, 6]
    assert os.path.exists(os.path.join(cfg.out_dir, "done"))
    assert evaluate.describe_run(cfg.out_dir) == ("PPO", "target_kl", cfg.target_kl)


# ----------------------------------------------------------------------------- resume


def resume_case(script, pipeline, bt_rm):
    """(module, main, config) of a few-step run of a script, checkpointing every few steps."""
    if script == "sft":
        return sft, sft.main, SFTConfig(
            out_dir="", init="scratch", dataset="synthetic", steps=6, batch_size=8, micro_batch=4,
            lr=3e-3, warmup=2, eval_every=3, eval_size=16, save_every=2, n_layer=1, n_head=2,
            n_embd=32, device="cpu")
    if script == "reward":  # 15 steps
        return reward, reward.train, RMConfig(
            out_dir="", init=pipeline.sft, objective="bt", pairs=bt_rm.pairs, epochs=1,
            batch_size=16, micro_batch=8, lr=1e-3, warmup=2, eval_size=64, eval_every=3,
            save_every=5, device="cpu")
    if script == "dpo":
        return dpo, dpo.main, DPOConfig(
            out_dir="", init=pipeline.sft, pairs=pipeline.pairs, steps=6, batch_size=8,
            micro_batch=4, lr=2e-4, warmup=2, eval_size=16, eval_every=3, save_every=2,
            device="cpu")
    return ppo, ppo.main, PPOConfig(  # PPO-GT, score normalisation and the KL controller on
        out_dir="", init=pipeline.sft, reward="gt", ground_truth=pipeline.gt,
        dataset="synthetic", n_prompts=64, steps=6, batch_size=8, gen_batch=8, mini_batch=4,
        micro_batch=2, ppo_epochs=2, lr=1e-4, target_kl=1.0, horizon=64, normalize_score=True,
        save_every=2, device="cpu")


@pytest.mark.parametrize("script", ["sft", "reward", "dpo", "ppo"])
def test_resume_is_bit_identical(script, pipeline, bt_rm, tmp_path, monkeypatch):
    module, main, cfg = resume_case(script, pipeline, bt_rm)
    assert_resume_identical(module, main, cfg, tmp_path, monkeypatch)
    if script == "reward":  # and the best checkpoint is the same
        for name in ("model.safetensors", "reward_head.safetensors"):
            assert read_bytes(tmp_path / "A" / "best" / name) == \
                read_bytes(tmp_path / "B" / "best" / name)


@pytest.mark.parametrize("script", ["sft", "reward", "dpo", "ppo"])
def test_kill_before_first_checkpoint_restarts_cleanly(script, pipeline, bt_rm, tmp_path,
                                                       monkeypatch):
    """Killed after logging some steps but before its first checkpoint, a run has nothing to
    resume from: started again it must start over, and its log must not keep the dead run's rows
    (a kill never leaves half a file, and the log holds one row per logged step)."""
    module, main, cfg = resume_case(script, pipeline, bt_rm)
    cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / "run"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as mp:
        mp.setattr(runs, "save_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            main(cfg)
    log_path = os.path.join(cfg.out_dir, "log.jsonl")
    assert read_jsonl(log_path) and not list_checkpoints(cfg.out_dir)
    history = main(cfg)
    steps = [r["step"] for r in read_jsonl(log_path)]
    assert steps == sorted(set(steps)), steps  # each step logged once
    assert without_timing(read_jsonl(log_path)) == without_timing(history)


# ----------------------------------------------------------------------------- evaluation

ROW_KEYS = {"method", "param", "value", "seed", "step", "reward", "reward_se", "kl", "kl_k1",
            "kl_k3", "n"}


def test_evaluate_frontier(pipeline, dpo_run, bt_rm, tmp_path):
    out = str(tmp_path / "frontier.jsonl")
    cfg = EvalConfig(runs=(dpo_run.out,), ref=pipeline.sft, ground_truth=pipeline.gt,
                     dataset="synthetic", out=out, n_prefixes=32, best_of=(4,), rm=bt_rm.out,
                     micro_batch=32, device="cpu")
    rows = evaluate.main(cfg)
    assert len(rows) == 4 and all(ROW_KEYS <= r.keys() for r in rows)
    by_method = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    assert sorted(by_method) == ["Best-of-N", "DPO", "SFT"]
    (ref_row,) = by_method["SFT"]
    assert ref_row["kl"] == 0 and ref_row["kl_k1"] == 0 and ref_row["kl_k3"] == 0
    assert ref_row["n"] == 32 and 0 <= ref_row["reward"] <= 1 and ref_row["reward_se"] > 0
    dpo_rows = sorted(by_method["DPO"], key=lambda r: r["step"])
    assert [r["step"] for r in dpo_rows] == [15, 30]
    assert all(r["param"] == "beta" and r["value"] == 0.1 and r["seed"] == 0 for r in dpo_rows)
    assert all(r["kl"] > 0 and r["kl_k3"] >= 0 for r in dpo_rows)
    (bon,) = by_method["Best-of-N"]
    bound = math.log(4) - 3 / 4
    assert bon["value"] == 4 and bon["kl"] == pytest.approx(bound, abs=1e-6)
    assert bon["kl_k1"] == pytest.approx(bound, abs=1e-6)
    assert bon["kl_k3"] == pytest.approx(bound, abs=1e-6)
    assert evaluate.best_of_n_kl_bound(1) == 0.0
    png = str(tmp_path / "frontier.png")
    assert os.path.getsize(png) > 0

    # a second call evaluates nothing new
    os.remove(png)
    again = evaluate.main(cfg)
    assert again == rows and read_jsonl(out) == rows
    assert os.path.exists(png)  # but redraws the plot

    os.remove(png)
    r = subprocess.run([sys.executable, "evaluate.py", "plot", out], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(png) > 0 and r.stdout.strip() == png


def test_evaluations_sharing_their_models_load_them_once(pipeline, dpo_run, tmp_path,
                                                         monkeypatch):
    """evaluate.main with a `shared` dict kept across calls (frontier.py's, one per sweep run):
    the reference, the ground truth and the prefixes are loaded at the first call with work, not
    again; the rows are those of calls that each load their own; a dict loaded for another
    evaluation (here: other prefixes) is refused."""
    loads, load = [], evaluate.load_shared
    monkeypatch.setattr(evaluate, "load_shared", lambda c: loads.append(c) or load(c))
    ckpts = [p for _, p in list_checkpoints(dpo_run.out)]
    cfg = lambda name, run, n=16: EvalConfig(
        runs=(run,), ref=pipeline.sft, ground_truth=pipeline.gt, dataset="synthetic",
        out=str(tmp_path / name), n_prefixes=n, micro_batch=16, plot=False, device="cpu")
    shared = {}
    for p in ckpts:  # as checkpoints are written
        evaluate.main(cfg("shared.jsonl", p), shared)
    evaluate.main(cfg("shared.jsonl", ckpts[-1]), shared)  # nothing to do: nothing loaded
    assert len(loads) == 1 and shared["ref"].lm_head.weight.device.type == "cpu"
    for p in ckpts:
        evaluate.main(cfg("own.jsonl", p))
    assert len(loads) == 1 + len(ckpts)
    rows = read_jsonl(str(tmp_path / "own.jsonl"))
    assert read_jsonl(str(tmp_path / "shared.jsonl")) == rows and len(rows) == 1 + len(ckpts)
    with pytest.raises(ValueError, match="shared models were loaded for"):
        evaluate.main(cfg("other.jsonl", ckpts[0], n=8), shared)


def test_token_kl_is_the_exact_kl(tiny_gpt):
    policy, ref = tiny_gpt(seed=0, vocab_size=13), tiny_gpt(seed=1, vocab_size=13)
    x = torch.randint(0, 13, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[0, 2:] = True
    mask[1, 4:7] = True  # row 2: nothing scored
    with torch.no_grad():
        logits, ref_logits = policy(x), ref(x)
    for temperature in (1.0, 0.7):
        kl = evaluate.token_kl(logits, ref_logits, mask, temperature)
        assert kl.shape == (3, 8)
        p = torch.distributions.Categorical(logits=logits[:, :-1].double() / temperature)
        q = torch.distributions.Categorical(logits=ref_logits[:, :-1].double() / temperature)
        hand = torch.distributions.kl_divergence(p, q) * mask[:, 1:]
        assert torch.allclose(kl.double(), hand, atol=1e-6)
        assert bool((kl[~mask[:, 1:]] == 0).all()) and bool((kl[mask[:, 1:]] > 0).all())


def test_k1_k3_estimate_the_exact_kl(tiny_gpt):
    vocab, eos = 12, 11
    policy = tiny_gpt(seed=0, vocab_size=vocab, std=0.3)
    ref = tiny_gpt(seed=1, vocab_size=vocab, std=0.3)
    rng = random.Random(0)
    prefixes = [[rng.randrange(eos) for _ in range(rng.randint(1, 4))] for _ in range(1500)]
    tok = types.SimpleNamespace(eos_id=eos)
    _, kl, k1, k3 = evaluate.sample_and_measure(policy, ref, prefixes, tok, 500, 0, "cpu")
    assert kl.shape == k1.shape == k3.shape == (1500,)
    assert bool((kl >= 0).all()) and bool((k3 >= 0).all())
    assert kl.mean() > 0.5  # the pair differs enough for the test to mean something
    for est in (k1, k3):
        diff = est - kl  # paired: both measured on the same samples
        se = diff.std() / math.sqrt(len(diff))
        assert abs(diff.mean()) < 4 * se + 1e-3, (kl.mean(), est.mean(), se)
    # and identical models: every estimate is zero
    _, kl0, k10, k30 = evaluate.sample_and_measure(policy, policy, prefixes[:50], tok, 50, 0,
                                                   "cpu")
    assert kl0.abs().max() < 1e-5 and k10.abs().max() < 1e-5 and k30.abs().max() < 1e-5


# ----------------------------------------------------------------------------- command lines

HELP = {"sft": ["sft.py"], "reward": ["reward.py", "train"], "pairs": ["pairs.py"],
        "dpo": ["dpo.py"], "ppo": ["ppo.py"], "evaluate": ["evaluate.py"],
        "frontier": ["frontier.py"], "data": ["data.py"], "reward (no subcommand)": ["reward.py"],
        "reward score": ["reward.py", "score"], "evaluate plot": ["evaluate.py", "plot"],
        "optimum": ["-m", "theory.optimum"], "preferences": ["-m", "hh_tldr.preferences"],
        "winrate": ["-m", "hh_tldr.winrate"],
        "winrate plot": ["-m", "hh_tldr.winrate", "plot"], "hh_tldr": ["-m", "hh_tldr.run"],
        "report sweep": ["-m", "report.sweep"], "online dpo": ["-m", "online.dpo"]}
# the scripts whose flags come from a config dataclass (runs.run_main)
CONFIG_SCRIPTS = ("sft", "reward", "pairs", "dpo", "ppo", "evaluate", "frontier", "optimum",
                  "preferences", "winrate", "hh_tldr", "online dpo")


@pytest.fixture(scope="module")
def help_runs():
    """`python <script> --help` of every script, each a fork of one interpreter (forkrun.py)."""
    done = run_all([[*argv, "--help"] for argv in HELP.values()], cwd=REPO, timeout=120)
    return {name: ((r.stdout, r.stderr), r.returncode) for name, r in zip(HELP, done)}


def test_forkrun_gives_what_a_fresh_interpreter_gives(tmp_path):
    """The runner behind help_runs and the bad-input cases: exit codes, an uncaught exception's
    traceback, sys.exit with a message, each command line's own output and argv, __main__."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        "if __name__ == '__main__':\n"
        "    print('out', *sys.argv[1:]); print('err', file=sys.stderr)\n"
        "    what = sys.argv[1]\n"
        "    if what == 'raise': raise ValueError('boom')\n"
        "    if what == 'message': sys.exit('error: bad flag')\n"
        "    if what == 'code': sys.exit(3)\n")
    cases = [[str(script), w] for w in ("ok", "raise", "message", "code")]
    ok, raised, message, code = run_all(cases, cwd=REPO)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "out ok\n", "err\n")
    assert raised.returncode == 1 and "Traceback" in raised.stderr
    assert raised.stderr.rstrip().endswith("ValueError: boom")
    assert message.returncode == 1 and message.stderr.endswith("error: bad flag\n")
    assert (code.returncode, code.stdout) == (3, "out code\n")
    for argv, r in zip(cases, (ok, raised, message, code)):  # the same as a real interpreter's
        real = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True)
        assert (r.returncode, r.stdout, r.stderr) == (real.returncode, real.stdout, real.stderr)


@pytest.mark.parametrize("script", sorted(HELP))
def test_cli_help(help_runs, script):
    (stdout, stderr), code = help_runs[script]
    assert code == 0, stderr
    if script == "reward (no subcommand)":  # names both subcommands
        assert "reward.py score" in stdout and "reward.py train" in stdout
        return
    assert stdout.startswith("usage:") and "--help" in stdout
    if script not in ("data", "evaluate", "frontier", "reward score", "evaluate plot", "optimum",
                      "report sweep",
                      "preferences", "winrate plot", "hh_tldr"):
        assert "--out_dir" in stdout and "--seed" in stdout
    if script in CONFIG_SCRIPTS:
        # the description is the docstring's whole first paragraph: it ends a sentence
        description = stdout.split("\n\n")[1]
        assert description.rstrip().endswith("."), description
        assert "(default: None)" not in stdout.split("--ref REF")[-1].split("\n")[0]
    if script == "evaluate":
        assert "evaluate.py plot" in stdout
    if script in ("reward score", "evaluate plot", "report sweep"):  # every argument has help
        args = stdout.split("positional arguments:")[1]
        assert all(len(line.split()) > 1 for line in args.splitlines()
                   if line.startswith("  ") and not line.startswith("   ")), args


def test_cli_dpo_run(pipeline, tmp_path):
    out = str(tmp_path / "dpo_cli")
    argv = [sys.executable, "dpo.py", "--init", pipeline.sft, "--pairs", pipeline.pairs,
            "--out_dir", out, "--beta", "0.5", "--steps", "2", "--batch_size", "8",
            "--micro_batch", "4", "--lr", "1e-4", "--warmup", "1", "--eval_size", "16",
            "--save_every", "1", "--device", "cpu"]
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [s for s, _ in list_checkpoints(out)] == [1, 2]
    assert os.path.exists(os.path.join(out, "done"))
    log = read_jsonl(os.path.join(out, "log.jsonl"))
    assert [row["step"] for row in log] == [0, 1, 2]
    assert evaluate.describe_run(out) == ("DPO", "beta", 0.5)
    # the same folder with another config is refused in one line, exit status 1
    r = subprocess.run(argv[:-2] + ["--beta", "1.0", "--device", "cpu"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("error:") and "beta" in r.stderr
