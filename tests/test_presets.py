"""The presets of frontier.py, checked from their own numbers."""

import pytest

import frontier
import ppo


@pytest.mark.parametrize("preset", list(frontier.PRESETS))
def test_kl_controller_can_move_its_coefficient_four_fold_both_ways(preset):
    p = frontier.PRESETS[preset]
    low, high = frontier.kl_coef_range(p.ppo)
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
    low, high = frontier.kl_coef_range(dict(frontier.PRESETS["gpt2"].ppo, horizon=10000))
    assert 0.8 < low < 0.82 and 1.22 < high < 1.24
