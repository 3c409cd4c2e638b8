"""ppo.py --prompts: PPO on the prompts of a preference file (the HH and TL;DR experiments), the
learned Bradley-Terry RM trained on its comparisons as the reward, the SFT model as the start and
the reference. The inputs are made as the project makes them: local files in the hub layouts,
converted by hh_tldr.preferences, a tiny SFT from scratch (sft.py) and a tiny RM (reward.py)."""

import gzip
import json
import math
import os
import types

import pytest
from conftest import write_cat_tldr

import ppo
import reward
import sft

from hh_tldr.preferences import PreferencesConfig
from hh_tldr.preferences import main as convert
from hh_tldr.winrate import load_test
from plumbing.runs import run_main
from plumbing.utils import list_checkpoints, read_jsonl
from synthetic.dialogues import synthetic_dialogues

SMALL = dict(batch_size=8, micro_batch=8, eval_every=2, save_every=2, eval_size=8, device="cpu")
PPO_SMALL = dict(steps=2, batch_size=8, gen_batch=8, mini_batch=4, micro_batch=4, ppo_epochs=1,
                 lr=1e-4, save_every=2, eval_every=2, device="cpu")


def sft_and_rm(root, rm_pairs: str, **sft_kw):
    """A 2-step SFT from scratch, then a Bradley-Terry RM from it on `rm_pairs` (one epoch)."""
    sft.main(sft.SFTConfig(init="scratch", out_dir=str(root / "sft"), steps=2, lr=3e-3,
                           n_layer=1, n_head=2, n_embd=16, **SMALL, **sft_kw))
    reward.train(reward.RMConfig(out_dir=str(root / "rm"), init=str(root / "sft"),
                                 objective="bt", pairs=rm_pairs, epochs=1, lr=1e-3, warmup=0,
                                 **SMALL))
    return str(root / "sft"), str(root / "rm")


@pytest.fixture(scope="module")
def tldr(tmp_path_factory):
    """TL;DR: the comparisons (prompt, chosen "TL;DR: ...", rejected) and the SFT set (prompt
    ending "TL;DR:", label) as parquet, converted to pairs and completions on GPT-2's BPE; SFT on
    the completions (block 64), the RM on the pairs."""
    root = tmp_path_factory.mktemp("tldr")
    pairs, completions = write_cat_tldr(str(root))
    init, rm = sft_and_rm(root, pairs, vocab="gpt2", block_size=64, completions=completions)
    return types.SimpleNamespace(root=root, pairs=pairs, completions=completions, sft=init, rm=rm)


@pytest.fixture(scope="module")
def hh(tmp_path_factory):
    """HH: Anthropic/hh-rlhf's hub layout (<subset>/{train,test}.jsonl.gz of chosen/rejected
    transcripts) holding the synthetic dialogues, converted on the tiny preset's compact
    "dialogue" vocabulary; SFT on the chosen responses (block 32), the RM on the pairs."""
    root = tmp_path_factory.mktemp("hh")
    for k, subset in enumerate(("helpful-base", "harmless-base")):
        os.makedirs(root / "hub" / subset)
        for j, split in enumerate(("train", "test")):
            with gzip.open(root / "hub" / subset / f"{split}.jsonl.gz", "wt") as f:
                f.writelines(json.dumps(r) + "\n" for r in synthetic_dialogues(24, 2 * k + j))
    pairs = str(root / "pairs.jsonl")
    stats = convert(PreferencesConfig(dataset=str(root / "hub"), split="train", out=pairs,
                                      tokenizer="dialogue", max_length=32, max_prompt_length=20))
    assert stats["format"] == "hh" and stats["written"] > 16
    init, rm = sft_and_rm(root, pairs, vocab="dialogue", block_size=32, pairs=pairs)
    return types.SimpleNamespace(root=root, pairs=pairs, sft=init, rm=rm)


def recording(calls):
    """ppo.sample_completions, recording (prompts, completions, sampling settings) of each call."""
    sample = ppo.sample_completions

    def wrapper(model, prompts, *args, **kw):
        comps = sample(model, prompts, *args, **kw)
        calls.append((list(prompts), comps, kw))
        return comps
    return wrapper


def check_run(log, out, calls, n_new):
    """What every preference-prompt run shows: finite scores, KL 0 at the first rollout (policy =
    reference), a checkpoint with its value head, completions of at most n_new tokens."""
    assert [r["step"] for r in log] == [1, 2]
    assert all(math.isfinite(r["score/mean"]) and math.isfinite(r["kl/seq"]) for r in log)
    assert abs(log[0]["kl/seq"]) < 1e-4
    (step, folder), = list_checkpoints(out)
    assert step == 2 and os.path.isfile(os.path.join(folder, "value_head.safetensors"))
    assert os.path.exists(os.path.join(out, "done"))
    assert len(calls) == 2 and all(kw["max_new_tokens"] == n_new for *_, kw in calls)
    assert all(0 < len(c) <= n_new for _, comps, _ in calls for c in comps)


def test_ppo_on_tldr_completions_prompts_cut_from_the_left(tldr, tmp_path, monkeypatch):
    # block 64 - 48 new tokens: each TL;DR prompt (about 28 tokens) keeps its last 16, the cue
    calls, out = [], str(tmp_path / "ppo")
    monkeypatch.setattr(ppo, "sample_completions", recording(calls))
    log = ppo.main(ppo.PPOConfig(out_dir=out, init=tldr.sft, rm=tldr.rm,
                                 prompts=tldr.completions, max_new_tokens=48, **PPO_SMALL))
    check_run(log, out, calls, 48)
    _, rows = load_test(tldr.completions)
    ends = {tuple(p[-16:]) for p, *_ in rows}
    assert all(len(p) > 16 for p, *_ in rows)  # every prompt was cut
    tok = ppo.load_tokenizer(tldr.sft)
    for prompts, _, _ in calls:
        assert all(tuple(p) in ends and tok.decode(p).endswith("TL;DR:") for p in prompts)
    assert read_jsonl(os.path.join(out, "log.jsonl")) == log


def test_ppo_on_hh_pairs_prompts_in_the_compact_vocabulary(hh, tmp_path, monkeypatch):
    calls, out = [], str(tmp_path / "ppo")
    monkeypatch.setattr(ppo, "sample_completions", recording(calls))
    log = ppo.main(ppo.PPOConfig(out_dir=out, init=hh.sft, rm=hh.rm, prompts=hh.pairs,
                                 max_new_tokens=8, n_prompts=10, **PPO_SMALL))
    check_run(log, out, calls, 8)
    file_prompts = [tuple(r["prompt_ids"]) for r in read_jsonl(hh.pairs)]
    distinct = list(dict.fromkeys(file_prompts))
    sampled = {tuple(p) for prompts, _, _ in calls for p in prompts}
    assert len(distinct) > 10 and sampled <= set(distinct)  # whole prompts of the file, uncut
    assert len(sampled) == 10  # the pool: n_prompts of them; 2 steps of 8 rollouts reach all
    assert os.path.isfile(os.path.join(list_checkpoints(out)[0][1], "compact_vocab.json"))


def test_score_rollouts_keeps_the_end_of_a_long_sequence():
    # the RM reads what the win-rate judge reads: prompt + completion without the final EOS, its
    # last block_size tokens (a long prompt never cuts the completion off)
    seen = []
    scorer = types.SimpleNamespace(
        model=types.SimpleNamespace(gpt=types.SimpleNamespace(
            config=types.SimpleNamespace(block_size=6))),
        score_ids=lambda seqs, **kw: seen.extend(seqs))
    cfg, tok = ppo.PPOConfig(reward="rm"), types.SimpleNamespace(eos_id=0)
    ppo.score_rollouts(cfg, scorer, tok, [[1, 2, 3, 4, 5], [7, 8]], [[9, 10, 11, 0], [12]])
    assert seen == [[3, 4, 5, 9, 10, 11], [7, 8, 12]]


def test_bad_preference_prompts_are_one_error_and_write_nothing(hh, tldr, tmp_path, capsys):
    out = str(tmp_path / "ppo")
    common = dict(out_dir=out, init=hh.sft, rm=hh.rm, max_new_tokens=8, **PPO_SMALL)
    neither = tmp_path / "reviews.jsonl"  # rows of neither layout
    neither.write_text(json.dumps(dict(text="a film", label=1)) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for path, match in ((neither, r"reviews\.jsonl: rows need prompt_ids"),
                        (empty, r"empty\.jsonl holds no rows"),
                        # GPT-2 ids against the compact vocabulary
                        (tldr.completions, r"completions\.jsonl: its prompt_ids are not ids")):
        with pytest.raises(ValueError, match=match):
            ppo.main(ppo.PPOConfig(prompts=str(path), **common))
        assert not os.path.exists(out)
    # compact ids fit GPT-2's vocabulary, but do not decode to the file's text
    with pytest.raises(ValueError, match=r"pairs\.jsonl: its prompt_ids are not ids"):
        ppo.main(ppo.PPOConfig(**dict(common, init=tldr.sft, rm=tldr.rm), prompts=hh.pairs))
    with pytest.raises(ValueError, match="no ground truth"):
        ppo.main(ppo.PPOConfig(prompts=hh.pairs, **dict(common, reward="gt")))
    assert not os.path.exists(out)
    # the command line: one error line naming the file, exit status 1
    with pytest.raises(SystemExit) as e:
        run_main(ppo.main, ppo.PPOConfig, ["--out_dir", out, "--init", hh.sft, "--rm", hh.rm,
                                           "--prompts", str(neither), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1 and err[0].startswith("error: ")
    assert str(neither) in err[0] and not os.path.exists(out)
