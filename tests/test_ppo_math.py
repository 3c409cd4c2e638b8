"""ppo.py's pure functions: GAE on right-padded rows and on the token_logprobs layout (masked
prompt, completion, padding), KL-penalised rewards, the adaptive KL controller, the clipped policy
and value losses, the update's log-probs and entropy at the sampling temperature, whitening,
running moments; and PPO, assembled from those functions as the language-model loop assembles
them, reaching the closed-form optimum pi_ref exp(r / beta) / Z of the KL-regularised objective on
a bandit."""

import math
import random

import pytest
import torch

from data import collate
from model import token_logprobs
from ppo import (
    RunningMoments,
    ValueHead,
    entropy,
    forward_lp_values,
    gae,
    kl_penalized_rewards,
    masked_mean,
    policy_loss,
    update_kl_coef,
    value_loss,
    whiten,
)

# ----------------------------------------------------------------------------- GAE


def gae_by_hand(rewards, values, mask, gamma, lam):
    """Plain-Python GAE per row over its valid (contiguous) entries; the value after the last
    valid token is 0; everything outside the mask is 0."""
    adv_rows, ret_rows = [], []
    for r, v, m in zip(rewards, values, mask):
        T = len(r)
        adv, ret = [0.0] * T, [0.0] * T
        valid = [t for t in range(T) if m[t]]
        assert valid == list(range(valid[0], valid[-1] + 1)), "contiguous"
        next_v, next_a = 0.0, 0.0
        for t in reversed(valid):
            delta = r[t] + gamma * next_v - v[t]
            adv[t] = delta + gamma * lam * next_a
            ret[t] = adv[t] + v[t]
            next_v, next_a = v[t], adv[t]
        adv_rows.append(adv)
        ret_rows.append(ret)
    return adv_rows, ret_rows


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


def test_gae_worked_example_with_end_padding():
    # row 0: 4 valid tokens; row 1: 2 valid, then 2 padding (whose rewards / values are junk)
    rewards = [[0.1, -0.2, 0.0, 1.0], [0.3, 2.0, 5.0, 7.0]]
    values = [[0.5, 0.4, 0.6, 0.8], [1.0, 0.7, 9.0, 9.0]]
    mask = [[1, 1, 1, 1], [1, 1, 0, 0]]
    adv, ret = gae(t64(rewards), t64(values), t64(mask), gamma=1.0, lam=0.95)
    # by hand, gamma = 1, lam = 0.95:
    # row 0: d3 = 1.0 + 0 - 0.8 = 0.2;          A3 = 0.2
    #        d2 = 0.0 + 0.8 - 0.6 = 0.2;        A2 = 0.2 + 0.95 * 0.2 = 0.39
    #        d1 = -0.2 + 0.6 - 0.4 = 0.0;       A1 = 0.95 * 0.39 = 0.3705
    #        d0 = 0.1 + 0.4 - 0.5 = 0.0;        A0 = 0.95 * 0.3705 = 0.351975
    # row 1: d1 = 2.0 + 0 - 0.7 = 1.3;          A1 = 1.3      (V after the last token = 0)
    #        d0 = 0.3 + 0.7 - 1.0 = 0.0;        A0 = 0.95 * 1.3 = 1.235
    want_adv = [[0.351975, 0.3705, 0.39, 0.2], [1.235, 1.3, 0.0, 0.0]]
    want_ret = [[0.851975, 0.7705, 0.99, 1.0], [2.235, 2.0, 0.0, 0.0]]
    assert adv.tolist() == [pytest.approx(r, abs=1e-12) for r in want_adv]
    assert ret.tolist() == [pytest.approx(r, abs=1e-12) for r in want_ret]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.5, 0.0)])
def test_gae_matches_loops_by_hand(gamma, lam):
    rng = random.Random(int(100 * gamma + 10 * lam))
    B, T = 5, 7
    # end padding, a masked prefix (prompt positions), both, a full row, a single token
    spans = [(0, 7), (0, 3), (2, 7), (1, 5), (6, 7)]
    mask = [[1 if a <= t < b else 0 for t in range(T)] for a, b in spans]
    rewards = [[rng.gauss(0, 1) for _ in range(T)] for _ in range(B)]
    values = [[rng.gauss(0, 1) for _ in range(T)] for _ in range(B)]
    adv, ret = gae(t64(rewards), t64(values), t64(mask), gamma, lam)
    want_adv, want_ret = gae_by_hand(rewards, values, mask, gamma, lam)
    for i in range(B):
        assert adv[i].tolist() == pytest.approx(want_adv[i], abs=1e-12)
        assert ret[i].tolist() == pytest.approx(want_ret[i], abs=1e-12)
    m = t64(mask).bool()
    assert torch.allclose(ret[m], (adv + t64(values))[m])  # returns = A + V on valid tokens
    assert (adv[~m] == 0).all() and (ret[~m] == 0).all()
    # a bool or float mask gives the same
    adv_b, ret_b = gae(t64(rewards), t64(values), m, gamma, lam)
    assert torch.equal(adv, adv_b) and torch.equal(ret, ret_b)


def test_gae_gamma1_lambda1_is_reward_to_go_minus_value():
    rewards = t64([[0.0, 0.0, 0.0, 2.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0]])
    values = t64([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    mask = t64([[0, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    assert ret.tolist() == [[0, 2, 2, 2, 0], [3, 2, 1, 0, 0]]
    assert adv.tolist() == [[0, -2, -1, 0, 0], [2, 0, -2, 0, 0]]


def test_kl_penalized_rewards_by_hand():
    lp = t64([[-1.0, -2.0, -0.5, -3.0], [-0.1, -0.2, -0.3, -0.4], [-1.0, -1.0, -1.0, -1.0]])
    ref = t64([[-1.5, -1.0, -0.5, -9.0], [-0.3, -0.1, -9.0, -9.0], [-2.0, -2.0, -2.0, -2.0]])
    mask = t64([[1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1]])
    scores = t64([0.7, -1.25, 3.0])
    coef = 0.2
    got = kl_penalized_rewards(lp, ref, scores, mask, coef)
    want = [[-coef * 0.5, -coef * -1.0, 0.0 + 0.7, 0.0],
            [-coef * 0.2, -coef * -0.1 - 1.25, 0.0, 0.0],
            [0.0, -coef * 1.0, -coef * 1.0, -coef * 1.0 + 3.0]]
    assert got.tolist() == [pytest.approx(r, abs=1e-12) for r in want]
    # the sum over a row = score - coef * (sampled sequence log-ratio)
    seq = ((lp - ref) * mask).sum(-1)
    assert torch.allclose(got.sum(-1), scores - coef * seq)
    # coefficient 0: the score alone, on the last valid token only
    only = kl_penalized_rewards(lp, ref, scores, mask, 0.0)
    assert only.tolist() == [[0, 0, 0.7, 0], [0, -1.25, 0, 0], [0, 0, 0, 3.0]]


def test_rewards_and_gae_on_the_token_logprobs_layout(tiny_gpt):
    """The layout the loop feeds them: collate -> mask m[:, 1:] False at prompt positions, True at
    completion tokens, False at padding; log-probs from model.token_logprobs."""
    policy, ref = tiny_gpt(seed=0), tiny_gpt(seed=1)
    rng = random.Random(0)
    prompts = [[rng.randrange(101) for _ in range(n)] for n in (2, 5, 3, 8)]
    completions = [[rng.randrange(101) for _ in range(n)] for n in (6, 1, 4, 3)]
    x, m = collate(prompts, completions, pad_id=100)
    mask = m[:, 1:].float()
    with torch.no_grad():
        lp = token_logprobs(policy(x), x, m, reduction="none").double()
        ref_lp = token_logprobs(ref(x), x, m, reduction="none").double()
    for i, (p, c) in enumerate(zip(prompts, completions)):  # the layout itself
        row = mask[i].tolist()
        assert row == [0.0] * (len(p) - 1) + [1.0] * len(c) + [0.0] * (len(row) - len(p) - len(c)
                                                                       + 1)
    scores = t64([0.9, 0.1, 0.5, -2.0])
    values = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)
    coef = 0.3
    rewards = kl_penalized_rewards(lp, ref_lp, scores, mask, coef)
    adv, ret = gae(rewards, values, mask, 1.0, 0.95)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        a, b = len(p) - 1, len(p) - 1 + len(c)  # the completion's columns
        # per-token rewards by hand on the completion, the score on its last token
        want_r = [-coef * (lp[i, t].item() - ref_lp[i, t].item()) for t in range(a, b)]
        want_r[-1] += scores[i].item()
        assert rewards[i, a:b].tolist() == pytest.approx(want_r, abs=1e-12)
        assert (rewards[i, :a] == 0).all() and (rewards[i, b:] == 0).all()
        # GAE on the compacted completion equals GAE on the laid-out row
        wa, wr = gae_by_hand([want_r], [values[i, a:b].tolist()], [[1] * len(c)], 1.0, 0.95)
        assert adv[i, a:b].tolist() == pytest.approx(wa[0], abs=1e-12)
        assert ret[i, a:b].tolist() == pytest.approx(wr[0], abs=1e-12)
        assert (adv[i, :a] == 0).all() and (adv[i, b:] == 0).all()
        assert (ret[i, :a] == 0).all() and (ret[i, b:] == 0).all()


# ----------------------------------------------------------------------------- KL controller


def test_kl_controller_by_hand():
    # n / horizon = 0.5: one update moves beta by half the relative KL error, the error clipped
    # to +-20 % (so beta moves by at most +-10 % here)
    beta, target, horizon, n = 1.0, 10.0, 1000, 500
    by_hand = {
        10.0: 1.0,  # on target: unchanged
        10.5: 1.025,  # 5 % above: beta * (1 + 0.05 / 2)
        11.0: 1.05,  # 10 % above
        9.0: 0.95,  # 10 % below
        12.0: 1.1,  # 20 % above: the edge of the clip
        8.0: 0.9,  # 20 % below
        13.0: 1.1,  # 30 % above: clipped to 20 %
        30.0: 1.1,  # 3 x the target: still 20 %
        1e6: 1.1,
        5.0: 0.9,  # half the target: clipped to -20 %
        0.0: 0.9,  # no KL at all: -20 %
    }
    for kl, want in by_hand.items():
        assert update_kl_coef(beta, kl, target, horizon, n) == pytest.approx(want, rel=1e-12), kl
    # a relative step: beta 0.2, 10 % above the target -> 0.2 * 1.05
    assert update_kl_coef(0.2, 11.0, 10.0, 1000, 500) == pytest.approx(0.21, rel=1e-12)
    # the loop's default settings (target 6, horizon 10000, 1024 rollouts): 0.2 * (1 +- 0.02048)
    assert update_kl_coef(0.2, 7.2, 6.0, 10000, 1024) == pytest.approx(0.204096, rel=1e-12)
    assert update_kl_coef(0.2, 60.0, 6.0, 10000, 1024) == pytest.approx(0.204096, rel=1e-12)
    assert update_kl_coef(0.2, 4.8, 6.0, 10000, 1024) == pytest.approx(0.195904, rel=1e-12)
    assert update_kl_coef(0.2, 0.0, 6.0, 10000, 1024) == pytest.approx(0.195904, rel=1e-12)
    # target None: a fixed coefficient, whatever the KL
    for kl in [0.0, 6.0, 100.0]:
        assert update_kl_coef(0.2, kl, None, 10000, 1024) == 0.2


def test_kl_controller_direction():
    beta, target, horizon, n = 0.2, 6.0, 10000, 1024
    kls = [0.0, 1.0, 4.8, 5.0, 5.5, 5.99, 6.0, 6.01, 6.6, 7.2, 9.0, 60.0]
    new = [update_kl_coef(beta, kl, target, horizon, n) for kl in kls]
    for kl, b in zip(kls, new):  # above the target beta rises, below it falls
        assert (b > beta) if kl > target else (b < beta) if kl < target else (b == beta), kl
    # monotone in the KL: strictly inside the clip (KL in [4.8, 7.2]), flat outside it
    assert new == sorted(new)
    inside = [b for kl, b in zip(kls, new) if 4.8 <= kl <= 7.2]
    assert len(set(inside)) == len(inside)
    assert new[0] == new[1] and new[-2] == new[-1]


@pytest.mark.parametrize("k", [1, 5, 40])
def test_kl_controller_moves_at_most_20_percent_of_n_over_horizon_per_iteration(k):
    """Over k iterations, whatever the KLs, beta stays within beta0 (1 -+ 0.2 n / horizon)^k, and
    reaches either bound when the KL stays far above (or below) the target."""
    beta0, target, horizon, n = 0.2, 6.0, 10000, 1024
    lo, hi = beta0 * (1 - 0.02048) ** k, beta0 * (1 + 0.02048) ** k  # 0.2 * 1024 / 10000
    rng = random.Random(k)
    for _ in range(50):
        beta = beta0
        for _ in range(k):
            beta = update_kl_coef(beta, rng.choice([0.0, 1e3, rng.uniform(0, 20)]), target,
                                  horizon, n)
        assert lo * (1 - 1e-12) <= beta <= hi * (1 + 1e-12)
    up = down = beta0
    for _ in range(k):
        up = update_kl_coef(up, 1e3, target, horizon, n)
        down = update_kl_coef(down, 0.0, target, horizon, n)
    assert up == pytest.approx(hi, rel=1e-12) and down == pytest.approx(lo, rel=1e-12)


def test_kl_controller_converges_toward_target_over_iterations():
    # a KL that falls as beta rises (KL ~ c / beta): the controller settles where KL = target
    beta, target = 0.05, 6.0
    for _ in range(400):
        beta = update_kl_coef(beta, 1.2 / beta, target, 10000, 1024)
    assert 1.2 / beta == pytest.approx(target, rel=0.05)


# ----------------------------------------------------------------------------- losses


def test_policy_loss_unclipped_within_range():
    lp_old = t64([[-1.0, -2.0, -0.5], [-3.0, -0.2, -1.0]])
    delta = t64([[0.1, -0.05, 0.15], [-0.1, 0.0, 0.17]])  # |ratio - 1| < 0.2 everywhere
    adv = t64([[1.0, -2.0, 0.5], [0.3, 4.0, -1.0]])
    mask = t64([[1, 1, 1], [1, 1, 1]])
    lp = (lp_old + delta).requires_grad_(True)
    loss, clipfrac, approx_kl = policy_loss(lp, lp_old, adv, mask, 0.2)
    ratios = [[math.exp(d) for d in row] for row in delta.tolist()]
    want = -sum(a * r for ar, rr in zip(adv.tolist(), ratios) for a, r in zip(ar, rr)) / 6
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert clipfrac.item() == 0.0
    want_kl = sum((r - 1) - math.log(r) for rr in ratios for r in rr) / 6
    assert approx_kl.item() == pytest.approx(want_kl, rel=1e-10)
    loss.backward()  # gradient of the unclipped surrogate: -A ratio / N
    assert torch.allclose(lp.grad, -adv * torch.exp(delta) / 6)


def test_policy_loss_clipped_by_hand():
    c = 0.2
    ratios = [1.5, 1.5, 0.5, 0.5, 1.1, 3.0]
    advs = [2.0, -2.0, 2.0, -2.0, 1.0, 1.0]
    old = t64([[-1.0] * 6])
    lp = (old + t64([[math.log(r) for r in ratios]])).requires_grad_(True)
    adv, mask = t64([advs]), torch.ones(1, 6, dtype=torch.float64)
    loss, clipfrac, approx_kl = policy_loss(lp, old, adv, mask, c)
    # max(-A r, -A clip(r)) element-wise:
    #  r=1.5, A=2:  max(-3.0, -2.4) = -2.4  (clipped: no gain past 1 + c)
    #  r=1.5, A=-2: max(3.0, 2.4)   =  3.0  (unclipped: the pessimistic bound)
    #  r=0.5, A=2:  max(-1.0, -1.6) = -1.0  (unclipped)
    #  r=0.5, A=-2: max(1.0, 1.6)   =  1.6  (clipped at 1 - c)
    #  r=1.1, A=1:  -1.1                    (inside the range)
    #  r=3.0, A=1:  max(-3.0, -1.2) = -1.2  (clipped)
    per = [-2.4, 3.0, -1.0, 1.6, -1.1, -1.2]
    assert loss.item() == pytest.approx(sum(per) / 6, rel=1e-12)
    assert clipfrac.item() == pytest.approx(5 / 6)  # every ratio but 1.1 is outside [0.8, 1.2]
    assert approx_kl.item() == pytest.approx(sum((r - 1) - math.log(r) for r in ratios) / 6)
    loss.backward()
    # clipped entries get no gradient; the others -A r / N
    want = [0.0, 2.0 * 1.5 / 6, -2.0 * 0.5 / 6, 0.0, -1.1 / 6, 0.0]
    assert lp.grad[0].tolist() == pytest.approx(want, abs=1e-12)


def test_policy_loss_ignores_masked_entries_and_is_zero_kl_at_old():
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 3
    adv = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0], [1] * 6, [0, 0, 0, 0, 0, 1]],
                        dtype=torch.float64)
    loss, clipfrac, approx_kl = policy_loss(old.clone(), old, adv, mask, 0.2)
    assert approx_kl.item() == 0.0 and clipfrac.item() == 0.0
    assert loss.item() == pytest.approx(-(adv * mask).sum().item() / mask.sum().item())
    # junk outside the mask changes nothing
    junk = old.clone()
    junk[mask == 0] = 50.0
    adv2 = adv.clone()
    adv2[mask == 0] = 1e6
    loss2, clipfrac2, approx_kl2 = policy_loss(junk, old, adv2, mask, 0.2)
    assert loss2.item() == pytest.approx(loss.item()) and clipfrac2.item() == 0.0
    assert approx_kl2.item() == 0.0
    # approx_kl is non-negative for any log-probs
    for seed in range(5):
        lp = old + torch.randn(4, 6, generator=torch.Generator().manual_seed(seed),
                               dtype=torch.float64)
        _, cf, ak = policy_loss(lp, old, adv, mask, 0.2)
        assert ak.item() >= 0 and 0 <= cf.item() <= 1


def test_value_loss_by_hand_with_clipping():
    old = t64([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    values = t64([[1.1, 1.5, 0.5, 1.5, 0.2, 7.0]]).requires_grad_(True)
    returns = t64([[2.0, 2.0, 2.0, 0.0, 1.0, 0.0]])
    mask = t64([[1, 1, 1, 1, 1, 0]])
    loss = value_loss(values, old, returns, mask, 0.2)
    # V_clip = old + clip(V - old, -0.2, 0.2);  0.5 * max((V - R)^2, (V_clip - R)^2):
    #  V=1.1 (inside): 0.5 * 0.81                                        = 0.405
    #  V=1.5, R=2: Vc=1.2: max(0.25, 0.64) -> clipped branch             = 0.32
    #  V=0.5, R=2: Vc=0.8: max(2.25, 1.44) -> unclipped                  = 1.125
    #  V=1.5, R=0: Vc=1.2: max(2.25, 1.44) -> unclipped                  = 1.125
    #  V=0.2, R=1: Vc=0.8: max(0.64, 0.04) -> unclipped                  = 0.32
    want = (0.405 + 0.32 + 1.125 + 1.125 + 0.32) / 5
    assert loss.item() == pytest.approx(want, rel=1e-12)
    loss.backward()
    # the clipped branch carries no gradient to V; the others (V - R) / N; masked: 0
    assert values.grad[0].tolist() == pytest.approx([-0.9 / 5, 0.0, -1.5 / 5, 1.5 / 5, -0.8 / 5,
                                                     0.0], abs=1e-12)
    # no clipping at all with a wide range: plain 0.5 * MSE over the mask
    wide = value_loss(values.detach(), old, returns, mask, 100.0)
    assert wide.item() == pytest.approx(0.5 * (0.81 + 0.25 + 2.25 + 2.25 + 0.64) / 5)


# ----------------------------------------------------------------------------- the update's forward


def test_logprobs_and_entropy_at_the_sampling_temperature(tiny_gpt):
    """forward_lp_values scores the tokens and hands entropy() the logits at the temperature the
    rollouts were sampled with: both describe the same distribution softmax(logits / T)."""
    T = 0.7
    policy = tiny_gpt(seed=0)
    value_head = ValueHead(policy.config.n_embd)
    rng = random.Random(0)
    prompts = [[rng.randrange(101) for _ in range(n)] for n in (2, 5, 3)]
    completions = [[rng.randrange(101) for _ in range(n)] for n in (6, 1, 4)]
    x, m = collate(prompts, completions, pad_id=100)
    mask = m[:, 1:].float()
    with torch.no_grad():
        raw = policy(x).double()  # (B, T, V) at temperature 1
        lp, values, logits = forward_lp_values(policy, value_head, x, m, T)
        lp1, _, logits1 = forward_lp_values(policy, value_head, x, m, 1.0)
    assert lp.shape == values.shape == mask.shape and logits.shape == raw.shape
    assert (values == 0).all()  # the value head starts at zero
    # log-probs: log_softmax(raw / T) at the next token, 0 outside the completion
    want = torch.log_softmax(raw[:, :-1] / T, -1).gather(-1, x[:, 1:, None]).squeeze(-1) * mask
    assert torch.allclose(lp.double(), want, atol=1e-5)
    assert not torch.allclose(lp1.double(), want, atol=1e-3)  # temperature 1 scores otherwise

    def by_hand(temperature):  # entropy of softmax(raw[:, :-1] / t), averaged over the mask
        p = torch.softmax(raw[:, :-1] / temperature, -1)
        h = -(p * p.log()).sum(-1)  # (B, T-1)
        return ((h * mask).sum() / mask.sum()).item()

    h_T, h_1 = entropy(logits, mask).item(), entropy(logits1, mask).item()
    assert h_T == pytest.approx(by_hand(T), rel=1e-5)
    assert h_1 == pytest.approx(by_hand(1.0), rel=1e-5)
    # a sharper distribution has less entropy: the temperature-1 value is not the one reported
    assert h_T < h_1 - 0.05, (h_T, h_1)


# ----------------------------------------------------------------------------- whitening, moments


def test_masked_mean_and_empty_mask():
    x = t64([[1.0, 2.0, 100.0], [3.0, -50.0, 4.0]])
    mask = t64([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(x, mask).item() == pytest.approx(2.5)
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whiten_masked_mean0_var1_and_zero_outside(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 9, generator=g, dtype=torch.float64) * 5 + 3
    mask = torch.rand(6, 9, generator=g) < 0.6
    w = whiten(x, mask.double())
    vals = w[mask]
    assert vals.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert vals.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    assert (w[~mask] == 0).all()
    # masked-out junk does not move the statistics
    x2 = x.clone()
    x2[~mask] = 1e6
    assert torch.allclose(whiten(x2, mask.double()), w)
    # and the same as standardising the masked entries by hand
    v = x[mask].tolist()
    mu = sum(v) / len(v)
    sd = math.sqrt(sum((a - mu) ** 2 for a in v) / len(v))
    assert vals.tolist() == pytest.approx([(a - mu) / sd for a in v], abs=1e-7)


def test_running_moments_equal_statistics_of_all_data():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, generator=g, dtype=torch.float64) * s + m
              for n, s, m in [(5, 1.0, 0.0), (17, 3.0, 2.0), (1, 1.0, -4.0), (40, 0.5, 1.0),
                              (64, 2.0, 10.0)]]
    rm = RunningMoments()
    for i, c in enumerate(chunks):
        rm.update(c)
        seen = torch.cat(chunks[: i + 1])
        assert rm.count == seen.numel()
        assert rm.mean == pytest.approx(seen.mean().item(), rel=1e-10, abs=1e-12)
        assert rm.var == pytest.approx(seen.var(unbiased=False).item(), rel=1e-10, abs=1e-12)
    x = t64([0.0, 1.0, 5.0])
    all_ = torch.cat(chunks)
    want = (x - all_.mean()) / all_.std(unbiased=False)
    assert torch.allclose(rm.normalize(x), want, rtol=1e-6)


# ----------------------------------------------------------------------------- bandit closed form


def ppo_bandit(beta, seed, K=5, whiten_advantages=False, iters=100, B=256, mini_batch=64,
               epochs=4, lr=0.05):
    """PPO on a K-armed bandit, built from ppo.py's functions as ppo.main builds its update: each
    sampled arm is a one-token completion (B, 1) with an all-True mask; reward = score on the last
    (only) token minus the KL penalty; GAE; several epochs of clipped policy + value loss over
    minibatches with Adam (lr decayed linearly to 0, so the iterate settles). Returns
    (pi_theta, pi_ref, r, value)."""
    g = torch.Generator().manual_seed(seed)
    pi_ref = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    r = 3 * (2 * torch.rand(K, generator=g, dtype=torch.float64) - 1)  # rewards in [-3, 3)
    log_ref = pi_ref.log()
    theta = log_ref.clone().requires_grad_(True)  # the policy starts at the reference (as SFT)
    v = torch.zeros((), dtype=torch.float64, requires_grad=True)  # the value "head"
    opt = torch.optim.Adam([theta, v], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / iters)
    kl_coef = beta
    gen = torch.Generator().manual_seed(seed + 1)
    mask = torch.ones(B, 1, dtype=torch.float64)
    for _ in range(iters):
        with torch.no_grad():  # rollout
            actions = torch.multinomial(torch.softmax(theta, 0), B, replacement=True,
                                        generator=gen)[:, None]  # (B, 1) "completions"
            old_lp = torch.log_softmax(theta, 0)[actions]
            ref_lp = log_ref[actions]
            old_values = v.expand(B, 1).clone()
            rewards = kl_penalized_rewards(old_lp, ref_lp, r[actions[:, 0]], mask, kl_coef)
            advantages, returns = gae(rewards, old_values, mask, 1.0, 0.95)
            if whiten_advantages:
                advantages = whiten(advantages, mask)
        for _ in range(epochs):  # update
            perm = torch.randperm(B, generator=gen)
            for s in range(0, B, mini_batch):
                idx = perm[s: s + mini_batch]
                lp = torch.log_softmax(theta, 0)[actions[idx]]
                values = v.expand(len(idx), 1)
                pg, _, _ = policy_loss(lp, old_lp[idx], advantages[idx], mask[idx], 0.2)
                vf = value_loss(values, old_values[idx], returns[idx], mask[idx], 0.2)
                opt.zero_grad()
                (pg + vf).backward()
                opt.step()
        sched.step()
        kl_coef = update_kl_coef(kl_coef, 0.0, None, 10000, B)  # fixed coefficient
    return torch.softmax(theta.detach(), 0), pi_ref, r, v.item()


def kl(p, q):
    return (p * (p / q).log()).sum().item()


@pytest.mark.parametrize("whiten_advantages", [False, True])
@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_ppo_bandit_reaches_closed_form(beta, whiten_advantages):
    pi, pi_ref, r, value = ppo_bandit(beta, seed=int(10 * beta),
                                      whiten_advantages=whiten_advantages)
    star = pi_ref * torch.exp(r / beta)
    log_z = star.sum().log().item()
    star = star / star.sum()
    assert kl(pi_ref, star) > 0.03  # the optimum is far from the start ...
    assert kl(pi, star) < 3e-3  # ... and PPO got there
    # not the optimum of another beta: the test tells KL strengths apart
    other = pi_ref * torch.exp(r / (1.5 * beta))
    assert kl(pi, other / other.sum()) > 1e-2
    # the value of the start state is the soft-optimal value beta log Z
    assert value == pytest.approx(beta * log_z, abs=2e-2)
