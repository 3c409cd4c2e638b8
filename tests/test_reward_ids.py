"""The learned reward model reads token ids: PPO (--reward rm) and best-of-N score the ids the
policy sampled, through the path the RM was trained on (reward.rm_tokens), not text decoded and
re-encoded (which does not always give the ids back). The ground truth keeps reading text.

A random tiny policy on the compact vocabulary samples sequences whose re-encoded text is other
ids (the compact unknown id decodes to nothing, neighbouring tokens merge differently), so the two
paths disagree there and the tests can tell which one a script used."""

import os
import shutil

import pytest
import torch
from conftest import randomize_

from data import load_reviews, make_prefixes
from model import GPT, GPTConfig
from reward import RewardModel, load_reward_model, rm_tokens


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, compact_tok):
    """A random policy and a random Bradley-Terry RM on the compact vocabulary, saved as
    checkpoint folders (what sft.py and reward.py write)."""
    tok = compact_tok
    root = tmp_path_factory.mktemp("rm_ids")
    cfg = GPTConfig(block_size=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32,
                    eos_token_id=tok.eos_id)
    policy, rm_gpt = (randomize_(GPT(cfg), seed) for seed in (0, 1))
    rm = RewardModel(rm_gpt, "bt")
    torch.nn.init.normal_(rm.head.weight, generator=torch.Generator().manual_seed(2))
    policy_dir, rm_dir = str(root / "policy"), str(root / "rm")
    policy.save_pretrained(policy_dir)
    rm.save_pretrained(rm_dir)
    for folder in (policy_dir, rm_dir):
        tok.save(folder)
    return policy_dir, rm_dir


def rm_scores(rm: RewardModel, tok, prompts, comps, retokenize=False):
    """(B,) RM scores of prompt + completion as ids (the training path, reward.rm_loss), or of
    the decoded text re-encoded (the path the scripts used to take)."""
    T = rm.gpt.config.block_size
    seqs = [tok.encode(tok.decode(p + c)) if retokenize else p + c for p, c in zip(prompts, comps)]
    with torch.no_grad():
        return rm.score([rm_tokens(s, tok.eos_id, T) for s in seqs], tok.eos_id)


def recording(fn, calls):
    """fn (model.sample_completions as a script imported it), recording (prompts, completions)."""
    def wrapper(model, prompts, *args, **kwargs):
        comps = fn(model, prompts, *args, **kwargs)
        calls.append((list(prompts), comps))
        return comps
    return wrapper


def test_ppo_rewards_are_the_rm_scores_of_the_sampled_ids(ckpts, compact_tok, tmp_path,
                                                         monkeypatch):
    import ppo

    policy_dir, rm_dir = ckpts
    calls = []
    monkeypatch.setattr(ppo, "sample_completions", recording(ppo.sample_completions, calls))
    log = ppo.main(ppo.PPOConfig(
        out_dir=str(tmp_path / "ppo"), init=policy_dir, reward="rm", rm=rm_dir,
        dataset="synthetic", n_prompts=16, steps=1, batch_size=8, gen_batch=8, mini_batch=8,
        micro_batch=8, ppo_epochs=1, device="cpu"))
    (prompts, comps), = calls
    rm = RewardModel.from_pretrained(rm_dir).eval()
    by_ids = rm_scores(rm, compact_tok, prompts, comps)
    by_text = rm_scores(rm, compact_tok, prompts, comps, retokenize=True)
    assert (by_ids - by_text).abs().max() > 1e-3  # the two paths differ on these samples
    assert log[0]["score/mean"] == pytest.approx(by_ids.mean().item(), abs=1e-5)


def test_ppo_refuses_a_reward_model_of_another_vocabulary(ckpts, tmp_path):
    import ppo

    policy_dir, rm_dir = ckpts
    other = str(tmp_path / "rm_gpt2_vocab")
    shutil.copytree(rm_dir, other)
    os.remove(os.path.join(other, "compact_vocab.json"))  # reads as GPT-2's full vocabulary
    out = str(tmp_path / "ppo")
    with pytest.raises(ValueError, match="different vocabularies"):
        ppo.main(ppo.PPOConfig(out_dir=out, init=policy_dir, reward="rm", rm=other,
                               dataset="synthetic", n_prompts=16, steps=1, batch_size=8,
                               gen_batch=8, mini_batch=8, micro_batch=8, device="cpu"))
    assert not os.path.exists(out)  # bad input: nothing written


def test_best_of_n_picks_by_the_rm_scores_of_the_sampled_ids(ckpts, compact_tok, monkeypatch):
    import evaluate

    tok, (policy_dir, rm_dir), n = compact_tok, ckpts, 4
    policy = GPT.from_pretrained(policy_dir).eval()
    rm = load_reward_model(rm_dir)
    prefixes = make_prefixes(load_reviews("synthetic", "test")[0], 12, 0, tok)
    calls, judged = [], []
    monkeypatch.setattr(evaluate, "sample_completions",
                        recording(evaluate.sample_completions, calls))

    def ground_truth(texts, batch_size=32, progress=None):  # records what it is asked to judge
        judged.extend(texts)
        return torch.zeros(len(texts))
    cfg = evaluate.EvalConfig(micro_batch=8, score_batch=8, seed=0)
    row = evaluate.best_of_n(policy, rm, ground_truth, prefixes, tok, n, cfg, "cpu", "policy")
    assert row["best_of"] == n and row["n"] == len(prefixes)

    want, by_text_pick = [], []
    for prompts, comps in calls:  # one chunk of prefixes x n samples per call, scored as such
        texts = [tok.decode(p + c) for p, c in zip(prompts, comps)]
        for picks, scores in ((want, rm_scores(rm.model, tok, prompts, comps)),
                              (by_text_pick, rm_scores(rm.model, tok, prompts, comps, True))):
            scores = scores.view(-1, n)
            picks += [texts[j * n + int(scores[j].argmax())] for j in range(len(scores))]
    assert by_text_pick != want  # re-tokenised text would pick another sample somewhere
    assert judged == want  # the ground truth judges, as text, the sample the RM's ids picked
