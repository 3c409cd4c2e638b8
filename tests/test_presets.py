"""The presets of frontier.py, checked from their own numbers."""

import dataclasses
import os

import pytest

import frontier
import ppo

from plumbing import presets


@pytest.mark.parametrize("preset", list(presets.PRESETS))
def test_kl_controller_can_move_its_coefficient_four_fold_both_ways(preset):
    p = presets.PRESETS[preset]
    low, high = presets.kl_coef_range(p.ppo)
    assert low <= 1 / 4 and high >= 4, (preset, low, high)
    # the same bound, by running the controller itself at a KL far above / below the target
    c = ppo.PPOConfig(**p.ppo)
    up = down = 1.0
    for _ in range(c.steps):
        up = ppo.update_kl_coef(up, 100.0, 3.0, c.horizon, c.batch_size)
        down = ppo.update_kl_coef(down, 0.0, 3.0, c.horizon, c.batch_size)
    assert up == pytest.approx(high) and down == pytest.approx(low)


def test_the_old_gpt2_horizon_was_inert():
    # 40 iterations of 256 samples against a 10,000-sample horizon: x0.81 .. x1.23 at most
    low, high = presets.kl_coef_range(dict(presets.PRESETS["gpt2"].ppo, horizon=10000))
    assert 0.8 < low < 0.82 and 1.22 < high < 1.24


def test_seeds_repeat_every_trained_method():
    one = frontier.plan(frontier.FrontierConfig(preset="tiny"))
    three = frontier.plan(frontier.FrontierConfig(preset="tiny", seeds=3))
    dirs = lambda steps: [c.out_dir for _, _, c in steps if hasattr(c, "out_dir")]
    assert set(dirs(one)) <= set(dirs(three))  # seed 0 keeps its folders: a 1-seed run extends
    assert len(dirs(three)) == len(set(dirs(three)))
    p = presets.PRESETS["tiny"]
    for kind, n in (("dpo_beta", len(p.betas)), ("unlikelihood_alpha", len(p.alphas)),
                    ("ppo_kl", len(p.target_kls)), ("ppo_gt_kl", len(p.target_kls))):
        cfgs = [c for _, _, c in three if hasattr(c, "out_dir")
                and c.out_dir.split("/")[-1].startswith(kind)]
        assert sorted(c.seed for c in cfgs) == sorted([0, 1, 2] * n), kind
    pft = [c for _, _, c in three if "preferred_ft" in getattr(c, "out_dir", "")]
    assert sorted(c.seed for c in pft) == sorted(set(p.pft_seeds) | {0, 1, 2})
    shared = [c for name, _, c in three if name in ("sft", "pairs", "reward model")]
    assert len(shared) == 3  # the SFT model, pairs and RM once, for every seed


def test_a_finished_stage_of_another_config_is_refused_not_skipped(tmp_path):
    import json

    steps = frontier.plan(frontier.FrontierConfig(preset="tiny", out_dir=str(tmp_path)))
    sft_cfg = steps[0][2]
    os.makedirs(sft_cfg.out_dir)
    old = dict(json.loads(json.dumps(dataclasses.asdict(sft_cfg))), lr=123.0)
    old.pop("overwrite")
    with open(os.path.join(sft_cfg.out_dir, "run_config.json"), "w") as f:
        json.dump(old, f)
    open(os.path.join(sft_cfg.out_dir, "done"), "w").close()
    with pytest.raises(ValueError, match="another config.*lr"):
        frontier.main(frontier.FrontierConfig(preset="tiny", out_dir=str(tmp_path)))


def test_the_tiny_preset_follows_one_rule():
    """docs/results.md, "The rule": four values per sweep (Preferred-FT: four seeds); one learning
    rate for every stage that trains the policy; every trained stage (the RM too) stops on its own
    validation signal (patience), within a cap of about 3 passes over its data."""
    p = presets.PRESETS["tiny"]
    assert len(p.betas) == len(p.alphas) == len(p.target_kls) == len(p.pft_seeds) == 4
    assert p.betas == (0.05, 0.1, 1.0, 5.0) and p.alphas == (0.05, 0.1, 0.5, 1.0)
    assert p.target_kls == (3.0, 6.0, 9.0, 12.0)  # the paper's grids (its section 6.1 sweep)
    assert p.dpo["lr"] == p.pft["lr"] == p.ppo["lr"]
    assert p.dpo["patience"] == p.pft["patience"] == p.ppo["patience"] == p.rm["patience"] == 2
    n_pairs = p.pairs["n_prefixes"] * 6 - p.dpo["eval_size"]
    for s in (p.dpo, p.pft):
        assert 2.5 < s["steps"] * s["batch_size"] / n_pairs < 3.5
    assert 2.5 < p.ppo["steps"] * p.ppo["batch_size"] / p.ppo["n_prompts"] < 3.5
    assert p.rm["epochs"] == 3
