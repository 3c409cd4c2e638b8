"""dpo.py's losses: each loss type against its formula computed by hand, the direction of the
gradients, numerical safety at extreme log-probs, the concatenated chosen + rejected forward, the
reference log-prob cache's key (one cache per precision), and DPO on a bandit reaching the
closed-form optimum of the KL-constrained objective (paper §4, A.1)."""

import math
import os
import random

import pytest
import torch

from dpo import (
    concatenated_logps,
    preference_loss,
    simpo_loss,
    token_unlikelihood_loss,
    unlikelihood_loss,
)
from model import GPT, GPTConfig

BETAS = [0.05, 0.1, 0.5, 1.0, 5.0]


def py_logsigmoid(x):
    """log sigmoid(x) in plain Python, stable for large |x|."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def py_sigmoid(x):
    return math.exp(py_logsigmoid(x))


def random_logps(n, seed, scale=30.0):
    """Four lists of n plausible summed log-probs (negative, tens of nats)."""
    rng = random.Random(seed)
    return [[-rng.uniform(0.5, scale) for _ in range(n)] for _ in range(4)]


def t64(*lists, grad=False):
    return [torch.tensor(x, dtype=torch.float64, requires_grad=grad) for x in lists]


# ----------------------------------------------------------------------------- hand values


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policy_equal_reference_gives_log2_and_zero_rewards(beta, seed):
    pc, pr, _, _ = random_logps(16, seed)
    a, b, c, d = t64(pc, pr, pc, pr)
    losses, rc, rr = preference_loss(a, b, c, d, beta, "dpo")
    assert losses.shape == (16,)
    assert torch.allclose(losses, torch.full_like(losses, math.log(2)), atol=1e-6, rtol=0)
    assert torch.equal(rc, torch.zeros_like(rc)) and torch.equal(rr, torch.zeros_like(rr))
    # also in float32, as the loop calls it
    losses32 = preference_loss(a.float(), b.float(), c.float(), d.float(), beta, "dpo")[0]
    assert torch.allclose(losses32, torch.full_like(losses32, math.log(2)), atol=1e-6, rtol=0)


def hand_loss(pc, pr, rc, rr, beta, loss_type, e=0.0, reference_free=False):
    h = (pc - pr) if reference_free else (pc - rc) - (pr - rr)
    if loss_type == "dpo":
        return -(1 - e) * py_logsigmoid(beta * h) - e * py_logsigmoid(-beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return max(0.0, 1 - beta * h)
    raise AssertionError(loss_type)


CASES = [
    ("dpo", 0.0, False), ("dpo", 0.1, False), ("dpo", 0.3, False), ("dpo", 0.0, True),
    ("dpo", 0.2, True), ("ipo", 0.0, False), ("ipo", 0.0, True), ("hinge", 0.0, False),
    ("hinge", 0.0, True),
]


@pytest.mark.parametrize("loss_type,e,reference_free", CASES)
@pytest.mark.parametrize("beta", BETAS)
def test_loss_matches_formula_by_hand(loss_type, e, reference_free, beta):
    pc, pr, rc, rr = random_logps(24, seed=int(beta * 100) + 7)
    # make the margins spread over both signs and several scales of beta * h
    rng = random.Random(3)
    pc = [x + rng.uniform(-10, 10) for x in pc]
    losses, crew, rrew = preference_loss(*t64(pc, pr, rc, rr), beta, loss_type,
                                         label_smoothing=e, reference_free=reference_free)
    want = [hand_loss(*v, beta, loss_type, e, reference_free) for v in zip(pc, pr, rc, rr)]
    assert losses.tolist() == pytest.approx(want, rel=1e-9, abs=1e-9)
    # rewards: beta * (policy - reference), whatever the loss type or reference_free says
    assert crew.tolist() == pytest.approx([beta * (a - b) for a, b in zip(pc, rc)], abs=1e-9)
    assert rrew.tolist() == pytest.approx([beta * (a - b) for a, b in zip(pr, rr)], abs=1e-9)
    assert not crew.requires_grad and not rrew.requires_grad


def test_hinge_is_zero_beyond_the_margin_and_ipo_zero_at_its_target():
    beta = 0.5
    # hinge: beta h >= 1 -> 0; ipo: h = 1 / (2 beta) -> 0
    pc, pr, rc, rr = t64([-1.0, -2.0], [-5.0, -3.0], [-2.0, -2.0], [-2.0, -2.0])
    hinge = preference_loss(pc, pr, rc, rr, beta, "hinge")[0]
    assert hinge.tolist() == [0.0, 0.5]  # h = 4 -> 0; h = 1 -> 1 - 0.5
    ipo = preference_loss(pc, pr, rc, rr, beta, "ipo")[0]
    assert ipo.tolist() == pytest.approx([(4 - 1) ** 2, 0.0])


def test_unknown_loss_type_raises():
    pc, pr, rc, rr = t64([-1.0], [-2.0], [-1.0], [-2.0])
    with pytest.raises(ValueError, match="loss_type"):
        preference_loss(pc, pr, rc, rr, 0.1, "kto")


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.5, 1.0])
def test_unlikelihood_matches_formula_by_hand(alpha):
    pc, pr, _, _ = random_logps(8, seed=5)
    got = unlikelihood_loss(*t64(pc, pr), alpha)
    assert got.tolist() == pytest.approx([-a + alpha * b for a, b in zip(pc, pr)], abs=1e-12)


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_token_unlikelihood_by_hand(alpha):
    tok_lp = [[-0.1, -2.0, -0.7, -5.0], [-0.3, -0.05, -9.0, -1.0]]
    mask = [[True, True, True, False], [False, True, True, True]]  # padding / masked prefix
    chosen = [-4.0, -7.5]
    got = token_unlikelihood_loss(torch.tensor(chosen, dtype=torch.float64),
                                  torch.tensor(tok_lp, dtype=torch.float64),
                                  torch.tensor(mask), alpha)
    want = []
    for c, lps, ms in zip(chosen, tok_lp, mask):
        ul = sum(-math.log(1 - math.exp(lp)) for lp, m in zip(lps, ms) if m)
        want.append(-c + alpha * ul)
    assert got.tolist() == pytest.approx(want, rel=1e-9)
    # masked entries do not count, whatever their value
    tok2 = torch.tensor(tok_lp, dtype=torch.float64)
    tok2[~torch.tensor(mask)] = -1e-3
    got2 = token_unlikelihood_loss(torch.tensor(chosen, dtype=torch.float64), tok2,
                                   torch.tensor(mask), alpha)
    assert torch.equal(got, got2)


# ----------------------------------------------------------------------------- gradients


def grads(loss_fn, pc, pr, rc, rr):
    a, b = t64(pc, pr, grad=True)
    c, d = t64(rc, rr)
    loss_fn(a, b, c, d).sum().backward()
    return a.grad, b.grad


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reference_free", [False, True])
def test_dpo_gradient_raises_chosen_lowers_rejected(beta, reference_free):
    pc, pr, rc, rr = random_logps(32, seed=11)
    gc, gr = grads(lambda *x: preference_loss(*x, beta, "dpo", reference_free=reference_free)[0],
                   pc, pr, rc, rr)
    assert (gc < 0).all() and (gr > 0).all()
    # and its size is the paper's weight: beta * sigmoid(-beta h)  (§4, "What does the DPO
    # update do?") -- larger when the implicit reward orders the pair wrongly
    for g, a, b, c, d in zip(gc.tolist(), pc, pr, rc, rr):
        h = (a - b) if reference_free else (a - c) - (b - d)
        assert g == pytest.approx(-beta * py_sigmoid(-beta * h), rel=1e-9, abs=1e-300)
    assert torch.equal(gc, -gr)


@pytest.mark.parametrize("beta", BETAS)
def test_cdpo_gradient_direction_below_its_optimum(beta):
    # conservative DPO's loss is minimised at sigmoid(beta h) = 1 - e; below it, chosen goes up
    e = 0.1
    pc, pr, rc, rr = random_logps(32, seed=12)
    target = math.log((1 - e) / e) / beta  # the h that minimises it
    hs = [(a - c) - (b - d) for a, b, c, d in zip(pc, pr, rc, rr)]
    keep = [i for i, h in enumerate(hs) if h < target]
    assert len(keep) >= 8
    pc, pr, rc, rr = ([x[i] for i in keep] for x in (pc, pr, rc, rr))
    gc, gr = grads(lambda *x: preference_loss(*x, beta, "dpo", label_smoothing=e)[0],
                   pc, pr, rc, rr)
    assert (gc < 0).all() and (gr > 0).all()


@pytest.mark.parametrize("beta", BETAS)
def test_ipo_and_hinge_gradients_below_their_margins(beta):
    pc, pr, rc, rr = random_logps(64, seed=13)
    hs = [(a - c) - (b - d) for a, b, c, d in zip(pc, pr, rc, rr)]
    ipo = [i for i, h in enumerate(hs) if h < 1 / (2 * beta)]
    hinge = [i for i, h in enumerate(hs) if beta * h < 1]
    assert len(ipo) >= 8 and len(hinge) >= 8
    for loss_type, keep in (("ipo", ipo), ("hinge", hinge)):
        sel = [[x[i] for i in keep] for x in (pc, pr, rc, rr)]
        gc, gr = grads(lambda *x, lt=loss_type: preference_loss(*x, beta, lt)[0], *sel)
        assert (gc < 0).all() and (gr > 0).all(), loss_type
    # beyond the margin the hinge is flat and IPO pushes back (it regresses h to 1 / (2 beta))
    big = [x + 10 / beta for x in pc]
    gc, gr = grads(lambda *x: preference_loss(*x, beta, "hinge")[0], big, pr, rc, rr)
    hs_big = [h + 10 / beta for h in hs]
    assert all(g == 0 for g, h in zip(gc.tolist(), hs_big) if beta * h > 1)
    gc, gr = grads(lambda *x: preference_loss(*x, beta, "ipo")[0], big, pr, rc, rr)
    assert all(g > 0 for g, h in zip(gc.tolist(), hs_big) if h > 1 / (2 * beta))


@pytest.mark.parametrize("alpha", [0.05, 1.0])
def test_unlikelihood_gradients(alpha):
    pc, pr, _, _ = random_logps(8, seed=14)
    a, b = t64(pc, pr, grad=True)
    unlikelihood_loss(a, b, alpha).sum().backward()
    assert torch.all(a.grad == -1) and torch.all(b.grad == alpha)
    # token level: chosen up, every scored rejected token down, masked tokens untouched
    c = torch.tensor(pc, dtype=torch.float64, requires_grad=True)
    tok = torch.tensor([[-0.2, -1.0, -3.0, -0.5]] * 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False, True, True, False]] * 8)
    token_unlikelihood_loss(c, tok, mask, alpha).sum().backward()
    assert torch.all(c.grad == -1)
    assert (tok.grad[mask] > 0).all() and (tok.grad[~mask] == 0).all()
    # d/d lp of -log(1 - e^lp) = e^lp / (1 - e^lp)
    p = tok.detach()[mask].exp()
    assert torch.allclose(tok.grad[mask], alpha * p / (1 - p))


# ----------------------------------------------------------------------------- extremes


EXTREMES = [(-1e4, 0.0), (0.0, -1e4), (-1e5, -1.0), (-1.0, -1e5), (-1e5, -1e5), (-3e4, -2e4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0, 5.0])
@pytest.mark.parametrize("loss_type,e", [("dpo", 0.0), ("dpo", 0.1), ("ipo", 0.0),
                                         ("hinge", 0.0)])
def test_finite_for_extreme_logps(dtype, beta, loss_type, e):
    for ref_free in (False, True):
        pc, pr = zip(*EXTREMES)
        rc, rr = zip(*reversed(EXTREMES))
        a = torch.tensor(pc, dtype=dtype, requires_grad=True)
        b = torch.tensor(pr, dtype=dtype, requires_grad=True)
        losses, rwc, rwr = preference_loss(a, b, torch.tensor(rc, dtype=dtype),
                                           torch.tensor(rr, dtype=dtype), beta, loss_type,
                                           label_smoothing=e, reference_free=ref_free)
        losses.sum().backward()
        for t in (losses, rwc, rwr, a.grad, b.grad):
            assert torch.isfinite(t).all(), (loss_type, beta, ref_free, t)
        # the dpo loss is linear in |beta h| there, not saturated to inf or 0 wrongly
        if loss_type == "dpo" and e == 0.0:
            want = [hand_loss(*v, beta, "dpo", reference_free=ref_free)
                    for v in zip(pc, pr, rc, rr)]
            assert losses.tolist() == pytest.approx(want, rel=1e-5)


def test_token_unlikelihood_finite_at_probability_one_and_tiny():
    c = torch.tensor([-1.0, -1e4], requires_grad=True)
    tok = torch.tensor([[0.0, -1e-9, -1e4, -1e5], [0.0, 0.0, 0.0, -1e-3]], requires_grad=True)
    mask = torch.ones(2, 4, dtype=torch.bool)
    loss = token_unlikelihood_loss(c, tok, mask, 1.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(tok.grad).all()
    assert torch.isfinite(c.grad).all()


# ----------------------------------------------------------------------------- concatenated forward


def pair_rows(vocab, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(5):
        p = [rng.randrange(vocab) for _ in range(rng.randint(1, 6))]
        c = [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
        r = [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
        while len(r) == len(c):
            r.append(rng.randrange(vocab))
        rows.append(dict(prompt_ids=p, chosen_ids=c, rejected_ids=r))
    return rows


def separate_logps(model, prompt, completion):
    """Sum of log-softmax over the completion tokens of one unpadded sequence, by hand."""
    ids = prompt + completion
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].double()
    lsm = torch.log_softmax(logits, -1)
    per_tok = [lsm[t - 1, ids[t]].item() for t in range(len(prompt), len(ids))]
    return sum(per_tok), per_tok


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pad_id", [0, 99])
def test_concatenated_forward_equals_separate_forwards(seed, pad_id):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=100, n_layer=2, n_head=2, n_embd=32, block_size=64)
    model = GPT(cfg).eval()
    with torch.no_grad():  # spread the logits so the log-probs differ visibly per position
        model.lm_head.weight.mul_(20)
    rows = pair_rows(100, seed)
    with torch.no_grad():
        ch, rj = concatenated_logps(model, rows, pad_id)
        _, _, rej_tok, rej_mask = concatenated_logps(model, rows, pad_id, per_token=True)
    assert ch.shape == rj.shape == (len(rows),)
    assert rej_tok.shape == rej_mask.shape and rej_tok.shape[0] == len(rows)
    for i, row in enumerate(rows):
        want_c, _ = separate_logps(model, row["prompt_ids"], row["chosen_ids"])
        want_r, toks = separate_logps(model, row["prompt_ids"], row["rejected_ids"])
        assert ch[i].item() == pytest.approx(want_c, abs=1e-5, rel=1e-6)
        assert rj[i].item() == pytest.approx(want_r, abs=1e-5, rel=1e-6)
        # per-token rejected log-probs: the same tokens, at the scored positions, in order
        scored = rej_tok[i][rej_mask[i].bool()].tolist()
        assert scored == pytest.approx(toks, abs=1e-5)
        assert int(rej_mask[i].sum()) == len(row["rejected_ids"])
    # the per-token output sums to the sequence output
    assert torch.allclose((rej_tok * rej_mask).sum(-1), rj, atol=1e-5)


def test_concatenated_forward_carries_gradients():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, n_layer=2, n_head=2, n_embd=32, block_size=64))
    rows = pair_rows(100, 3)
    ch, rj = concatenated_logps(model, rows, 0)
    (ch - rj).sum().backward()
    assert model.lm_head.weight.grad is not None
    assert model.lm_head.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- reference cache


def test_reference_cache_recomputes_under_another_precision(tiny_gpt, tmp_path, monkeypatch):
    """The reference log-prob cache is keyed by device type and autocast dtype. A cache written
    in fp32 (CPU) and read back under bf16 autocast (CUDA) is the reference at another precision
    than the policy: the loss at step 0 is no longer log 2. bf16 autocast is faked here on CPU
    by making utils.autocast_dtype answer bf16 (so the forward really runs in bf16)."""
    import dpo

    from plumbing import utils
    from plumbing.utils import write_jsonl

    ckpt = str(tmp_path / "ref")
    tiny_gpt(vocab_size=100).save_pretrained(ckpt)
    rows = pair_rows(100, 4)
    pairs = str(tmp_path / "pairs" / "pairs.jsonl")
    os.makedirs(os.path.dirname(pairs))
    write_jsonl(pairs, rows)
    cache_dir = tmp_path / "pairs" / "ref_logps"
    c32, r32 = dpo.reference_logps(ckpt, pairs, rows, 0, "cpu", 8)
    assert len(os.listdir(cache_dir)) == 1
    assert torch.equal(dpo.reference_logps(ckpt, pairs, rows, 0, "cpu", 8)[0], c32)  # reused

    bf16 = lambda device: torch.bfloat16  # noqa: E731
    monkeypatch.setattr(utils, "autocast_dtype", bf16, raising=False)
    monkeypatch.setattr(dpo, "autocast_dtype", bf16, raising=False)
    loads, real = [], dpo.GPT.from_pretrained
    monkeypatch.setattr(dpo.GPT, "from_pretrained",
                        lambda path, *a, **k: loads.append(path) or real(path, *a, **k))
    c16, r16 = dpo.reference_logps(ckpt, pairs, rows, 0, "cpu", 8)
    assert loads == [ckpt], "the fp32 cache was reused under bf16"
    assert len(os.listdir(cache_dir)) == 2  # one cache per precision
    assert not torch.equal(c16, c32)  # bf16 gives other numbers

    # policy = reference, both in bf16: log 2 with the bf16 cache, not with the fp32 one
    policy = real(ckpt).eval()
    with torch.no_grad():
        pc, pr = concatenated_logps(policy, rows, 0)
    loss16 = preference_loss(pc, pr, c16, r16, beta=1.0)[0]
    loss32 = preference_loss(pc, pr, c32, r32, beta=1.0)[0]
    assert torch.allclose(loss16, torch.full_like(loss16, math.log(2)), atol=1e-6)
    assert (loss32 - math.log(2)).abs().max() > 1e-3


# ----------------------------------------------------------------------------- bandit closed form


def closed_form(pi_ref, r, beta):
    """pi*(y) = pi_ref(y) exp(r(y) / beta) / Z, in plain Python."""
    w = [p * math.exp(x / beta) for p, x in zip(pi_ref, r)]
    z = sum(w)
    return [x / z for x in w]


def kl(p, q):
    return float(sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0))


def dpo_bandit(pi_ref, r, beta, steps=100):
    """Minimise the population DPO loss over all ordered pairs (i, j), i != j, weighted by the
    probability pi_ref(i) pi_ref(j) sigmoid(r_i - r_j) that i is sampled with j and preferred
    (Bradley-Terry), over a learnable K-vector of logits. Returns pi_theta."""
    K = len(pi_ref)
    log_ref = torch.log(torch.tensor(pi_ref, dtype=torch.float64))
    rt = torch.tensor(r, dtype=torch.float64)
    i, j = zip(*[(a, b) for a in range(K) for b in range(K) if a != b])
    i, j = torch.tensor(i), torch.tensor(j)
    weight = log_ref[i].exp() * log_ref[j].exp() * torch.sigmoid(rt[i] - rt[j])
    theta = torch.zeros(K, dtype=torch.float64, requires_grad=True)  # start at uniform
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=steps, tolerance_grad=1e-12,
                            tolerance_change=1e-15, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        lp = torch.log_softmax(theta, 0)
        losses = preference_loss(lp[i], lp[j], log_ref[i], log_ref[j], beta, "dpo")[0]
        loss = (weight * losses).sum()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return torch.softmax(theta.detach(), 0).tolist()


def test_dpo_bandit_worked_example_reaches_closed_form():
    pi_ref, r, beta = [0.5, 0.3, 0.2], [1.0, 0.0, -1.0], 0.5
    pi = dpo_bandit(pi_ref, r, beta)
    star = closed_form(pi_ref, r, beta)
    # by hand: (0.5 e^2, 0.3, 0.2 e^-2) / 4.0216 = (0.9187, 0.0746, 0.0067)
    assert pi == pytest.approx([0.9187, 0.0746, 0.0067], abs=1e-4)
    assert kl(pi, star) < 1e-6
    # and not the reward-greedy policy nor the reference
    assert kl(pi, pi_ref) > 0.1


@pytest.mark.parametrize("K", [3, 5, 8])
@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0, 2.0])
def test_dpo_bandit_reaches_closed_form(K, beta):
    g = torch.Generator().manual_seed(100 * K + int(10 * beta))
    pi_ref = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0).tolist()
    r = torch.rand(K, generator=g, dtype=torch.float64).tolist()  # rewards in [0, 1)
    star = closed_form(pi_ref, r, beta)
    pi = dpo_bandit(pi_ref, r, beta)
    assert kl(pi, star) < 1e-3
    # the implied reward beta log(pi / pi_ref) recovers r up to a constant
    implied = [beta * math.log(p / q) - x for p, q, x in zip(pi, pi_ref, r)]
    assert max(implied) - min(implied) < 1e-3
    # the test can fail: the optimum is far from the reference at these settings
    assert kl(star, pi_ref) > 1e-3


# ----------------------------------------------------------------------------- SimPO


def test_simpo_loss_by_hand_and_its_length_normalisation():
    """SimPO: -log sigmoid(beta (log pi_w / |y_w| - log pi_l / |y_l|) - gamma), gamma =
    ratio x beta; no reference; a completion twice as long with twice the log-prob scores the
    same (the mean per token is what counts)."""
    pc, pr = t64([-10.0, -30.0, -8.0], [-20.0, -12.0, -8.0])
    lc, lr = t64([5.0, 10.0, 4.0], [10.0, 4.0, 4.0])
    beta, ratio = 2.0, 0.5
    got = simpo_loss(pc, pr, lc, lr, beta, ratio)
    for i in range(3):
        h = pc[i].item() / lc[i].item() - pr[i].item() / lr[i].item()
        assert got[i].item() == pytest.approx(-py_logsigmoid(beta * h - ratio * beta), rel=1e-12)
    assert simpo_loss(*t64([-8.0], [-8.0], [4.0], [4.0]), beta, 0.0).item() == \
        pytest.approx(math.log(2))
    doubled = simpo_loss(2 * pc, pr, 2 * lc, lr, beta, ratio)
    torch.testing.assert_close(doubled, got)
    # the gradient raises the chosen log-prob and lowers the rejected one, each per token
    pc_, pr_ = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    simpo_loss(pc_, pr_, lc, lr, beta, ratio).sum().backward()
    assert (pc_.grad < 0).all() and (pr_.grad > 0).all()
    sig = torch.sigmoid(-(beta * (pc / lc - pr / lr) - ratio * beta))
    torch.testing.assert_close(pc_.grad, -beta * sig / lc)


@pytest.mark.parametrize("flags,msg", [
    (dict(loss="simpo", label_smoothing=0.1), "conservative DPO's: --loss dpo, not simpo"),
    (dict(loss="ipo", label_smoothing=0.1), "--loss dpo, not ipo"),
    (dict(loss="simpo", reference_free=True), "simpo has no reference"),
    (dict(loss="unlikelihood", reference_free=True), "unlikelihood uses none"),
    (dict(loss="dpo", optimizer="sgd"), "rmsprop or adamw"),
])
def test_dpo_refuses_flags_its_loss_would_ignore(flags, msg):
    from dpo import DPOConfig, check_config
    with pytest.raises(ValueError, match=msg):
        check_config(DPOConfig(**flags))
    check_config(DPOConfig(loss="dpo", label_smoothing=0.1, reference_free=True))  # both DPO's
