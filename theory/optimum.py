"""The KL-regularised optimum: the reference line of the reward-vs-KL frontier, estimated from
samples of the reference policy.

For the ground-truth reward r and the reference pi_ref, the best policy at trade-off beta,
argmax_pi E_pi[r] - beta KL(pi || pi_ref), is pi*_beta(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x)
(the paper's Eq. 4). No trained policy can lie above its (KL, reward) curve; this script draws
that curve from M completions of the reference per held-out test prefix, scored by the ground
truth, sampled and scored exactly as evaluate.py does; or, given trained policies (--policies), from
completions of the reference and of each policy, weighted as samples of their mixture, which
reaches much further in KL.

    python -m theory.optimum --ref runs/sft --ground_truth siebert/sentiment-roberta-large-english \
        --M 64 --out runs/optimum.jsonl
    python -m theory.optimum --ref runs/sft --policies runs/dpo_beta0.1 runs/ppo_kl6 ...
"""

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from data import PROTOCOL, collate, load_prefixes, load_tokenizer
from model import GPT, gpt_folder, sample_completions, token_logprobs
from reward import load_ground_truth

from plumbing.flags import arg, check_fields
from plumbing.runs import run_main
from plumbing.speed import speed_up
from plumbing.utils import atomic_torch_save, autocast, file_stamp, get_device, write_jsonl

# Trust the curve up to KL = TRUST * log M. Measured on a bandit whose rewards look like a confident
# classifier's P(positive), with per-prefix positive rates from ~0 to ~1 (tests/test_optimum.py):
# the estimate falls 0.01 below the exact optimum at KL ~ 0.2-0.3 log M (M = 16 ... 256; 1.1-1.2
# nats at M = 64), and the M = 64 and M = 256 curves part by 0.01 at 1.30-1.35 nats = 0.32 log 64,
# by > 0.02 from 2.5 nats (two M's agreeing flatters the smaller). Rows above it are written with
# trusted=False: draw them dotted, if at all.
TRUST = 0.25

# ----------------------------------------------------------------------------- the estimator


def optimum_curve(rewards, betas) -> list[tuple[float, float, float]]:
    """(beta, kl, reward) of the KL-regularised optimum pi*_beta for each beta, averaged over
    prefixes, by self-normalised importance sampling (SNIS) from the reference.

    rewards: (P, M), the ground-truth rewards r_i of M completions y_i ~ pi_ref(.|x) of each of P
    prefixes x (tensor, array or nested lists). betas: positive floats (math.inf allowed).

    Per prefix, pi*(y) = pi_ref(y) exp(r/beta) / Z with Z = E_ref[exp(r/beta)], so
        reward(beta) = E_pi*[r] ~ sum_i w_i r_i,   w_i = exp(r_i/beta) / sum_j exp(r_j/beta),
        KL(pi* || pi_ref) = E_pi*[log pi*/pi_ref] = E_pi*[r]/beta - log Z
            ~ sum_i w_i r_i/beta - log(sum_j exp(r_j/beta) / M) = sum_i w_i log(M w_i),
    the KL of the weights from the uniform 1/M (log_softmax, so no exp overflows). One beta for
    every prefix is also the optimum of the objective averaged over prefixes, so the means over
    prefixes trace the frontier.

    Finite M: the estimate is the exact optimum of the M-sample empirical reference, so its KL can
    never exceed log M (one sample taking all the weight), whereas the true KL grows to
    -log pi_ref(best y) as beta -> 0; completions better than the M seen are missing, so the
    reward comes out low, and the KL low as it nears log M. (Where pi* sits on a few outcomes each
    seen n times, the KL log(M/n) can come out a little high instead: Jensen.) Trust the curve only
    well below log M: see TRUST. beta -> inf: KL 0 and the reference's mean reward; beta -> 0:
    the mean of each prefix's best of M (best-of-M by the ground truth itself), at KL log M where
    the real best-of-M policy has log M - (M - 1)/M (evaluate.best_of_n_kl_bound).
    """
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if r.dim() != 2 or r.numel() == 0:
        raise ValueError(f"rewards must be (prefixes, samples), not shape {tuple(r.shape)}")
    log_m = math.log(r.shape[1])
    curve = []
    for beta in betas:
        if not beta > 0:
            raise ValueError(f"every beta must be positive, not {beta}")
        logw = torch.log_softmax(r / beta, dim=-1)  # (P, M), log w_i
        w = logw.exp()
        kl = torch.where(w > 0, w * (logw + log_m), 0.0).sum(-1).clamp(min=0.0)  # (P,)
        curve.append((float(beta), kl.mean().item(), (w * r).sum(-1).mean().item()))
    return curve


def log_betas(lo: float, hi: float, n: int) -> list[float]:
    """n betas, log-spaced from hi down to lo (KL from ~0 up towards log M)."""
    if not 0 < lo < hi or n < 2:
        raise ValueError(f"need 0 < beta_min < beta_max and n_betas >= 2, not {lo}, {hi}, {n}")
    return [hi * (lo / hi) ** (i / (n - 1)) for i in range(n)]


# ----------------------------------------------------------------------------- the mixture

# Trust a point of the mixture curve (mixture_optimum) while, for it and every point of smaller KL:
#  - halving: the mean of the curves of two halves of the samples (half of each component's), read
#    at the point's KL, lies within HALVES_TOL in reward of the point. A bias that shrinks like 1/N
#    doubles when N halves, so this shift estimates the point's own error (the idea of Richardson
#    extrapolation); a point beyond the KL that the halves reach is untrusted;
#  - reach: its KL is at most the largest KL(pi_c || pi_ref) of a component, measured on that
#    component's own samples, or TRUST log n_ref (what the reference's own samples reach): beyond
#    it, the curve extrapolates past every policy sampled.
# Measured on bandits whose optimum is exact, 288 runs: the classifier-like one of
# tests/test_optimum.py and a graded one whose optimum still climbs at 5 nats (r = sigmoid(mu_x +
# eps), mu_x, eps ~ N(0, 1)); 3 seeds; P = 256 or 1000 prefixes; 16 samples of the reference and 16
# of each component, 32 and 32, or 64 and 16 (the default); 8 sets of components: optima of a noisy
# reward r + N(0, s^2) (s = 0.05-0.2, so not pi*; or s = 0) from 0.2 to 7 nats, dense or sparse,
# short (<= 1.3 nats), or far optima of a wrong reward (s = 0.6). The shift was 0.8-2x the point's
# error where compared. With 0.004, every trusted point lay within 0.009 in reward of the exact
# curve, and a set like the tiny sweep's policies was trusted to 5.5-5.8 nats (classifier) and
# 6.7-6.8 (graded) at P = 256; 0.005 let points 0.012 off through, 0.003 distrusted some sets from
# KL 0, where the estimator's own 1/N bias is ~0.003. Rules on the ESS did worse: median ESS >= 8
# (or 16) trusted points 0.034 (0.021) off, the wrong reward's optima, and >= 16 stopped the
# tiny-like set at 3.5 nats. The reach binds where the components stop short: the set of <= 1.3 nats
# is trusted to ~1 nat, where the halving alone trusted it to 4.8-4.9 (classifier; gap there <
# 0.006) and 2.7-2.8 nats (graded): extrapolations that happened to land close.
HALVES_TOL = 0.004


def mixture_log_q(log_probs, counts) -> torch.Tensor:
    """log q(y|x) = log sum_c (n_c / N) pi_c(y|x), (P, N), from the (C, P, N) log-probs of every
    sample under every component, counts[c] = n_c samples of each prefix drawn from component c."""
    lp = torch.as_tensor(log_probs, dtype=torch.float64)
    share = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    return torch.logsumexp(lp + share.log()[:, None, None], dim=0)


def mixture_curve(rewards, log_ref, log_q, betas) -> list[tuple[float, float, float, float]]:
    """(beta, kl, reward, ess) of pi*_beta for each beta, averaged over prefixes, by SNIS from a
    mixture of policies (the reference and trained ones).

    rewards, log_ref, log_q: (P, N), for N completions y_i of each of P prefixes x, n_c of them
    drawn from each component pi_c: r_i, log pi_ref(y_i|x) and log q(y_i|x), q = sum_c (n_c/N) pi_c
    (mixture_log_q). Weighting each sample by the whole mixture, not by the component that drew it,
    is the balance heuristic (Veach & Guibas 1995): rho_i = pi_ref/q is at most N/n_ref when the
    reference is a component, so no weight explodes where a trained policy puts little mass.

    E_q[rho f] = E_ref[f] for every f, so on the samples the reference has weights u_i ∝ rho_i and
    pi* (∝ pi_ref exp(r/beta)) has w_i ∝ rho_i exp(r_i/beta):
        reward(beta) ~ sum_i w_i r_i,
        KL(pi* || pi_ref) ~ sum_i w_i log(w_i / u_i) = sum_i w_i r_i/beta - log Zhat,
            Zhat = sum_i rho_i exp(r_i/beta) / sum_i rho_i,
    the exact optimum of the weighted empirical reference, as optimum_curve's is of the plain one;
    with q = pi_ref (rho = 1, u_i = 1/N) these are optimum_curve's numbers. Zhat is normalised by
    sum_i rho_i rather than N: both are consistent (E_q[rho] = 1), but this KL is >= 0 and exactly 0
    at beta = inf, where the other is -log(mean rho), off by that mean's noise; on the steep start
    of the curve (reward ~ sqrt(KL)) that put it 0.015-0.019 off in reward on the bandits
    (N = 80-96).

    ess: the median over prefixes of 1 / sum_i w_i^2, how many samples carry pi* for a typical
    prefix (the minimum is 1 at small beta as soon as one prefix's best sample dominates). Reported,
    not trusted: HALVES_TOL says why.
    """
    r, log_ref, log_q = (torch.as_tensor(t, dtype=torch.float64) for t in (rewards, log_ref, log_q))
    if r.dim() != 2 or r.numel() == 0 or log_ref.shape != r.shape or log_q.shape != r.shape:
        raise ValueError(f"rewards, log_ref and log_q must be (prefixes, samples) alike, not "
                         f"{tuple(r.shape)}, {tuple(log_ref.shape)}, {tuple(log_q.shape)}")
    log_rho = log_ref - log_q
    log_u = torch.log_softmax(log_rho, dim=-1)  # (P, N), the reference's weights
    curve = []
    for beta in betas:
        if not beta > 0:
            raise ValueError(f"every beta must be positive, not {beta}")
        logw = torch.log_softmax(log_rho + r / beta, dim=-1)  # (P, N), pi*'s weights
        w = logw.exp()
        kl = torch.where(w > 0, w * (logw - log_u), 0.0).sum(-1).clamp(min=0.0)  # (P,)
        ess = 1.0 / (w * w).sum(-1)
        curve.append((float(beta), kl.mean().item(), (w * r).sum(-1).mean().item(),
                      ess.median().item()))
    return curve


def blocks(counts) -> list[slice]:
    """The columns of each component's samples: they lie component by component, counts[c] each."""
    starts = [sum(counts[:c]) for c in range(len(counts) + 1)]
    return [slice(a, b) for a, b in zip(starts, starts[1:])]


def component_kls(log_probs, counts) -> list[float]:
    """KL(pi_c || pi_ref) of each component (the reference first: 0), by Monte Carlo on the
    component's own samples: the mean of log pi_c(y|x) - log pi_ref(y|x) over them."""
    lp = torch.as_tensor(log_probs, dtype=torch.float64)
    return [(lp[c, :, b] - lp[0, :, b]).mean().item() for c, b in enumerate(blocks(counts))]


def mixture_optimum(rewards, log_probs, counts, betas) -> list[dict]:
    """The mixture curve and its trust: a row per beta with beta, kl, reward and ess
    (mixture_curve), shift (the halving's: the halves' mean reward at this KL minus this reward,
    NaN beyond the halves' KL), reach, and trusted (see HALVES_TOL).

    rewards (P, N); log_probs (C, P, N): log pi_c of every sample under every component, the
    reference first; the samples of each prefix lie component by component, counts[c] of
    component c (mixture_samples' layout), each an even number, for the halves."""
    r, lp = torch.as_tensor(rewards, dtype=torch.float64), torch.as_tensor(log_probs)
    if lp.shape != (len(counts), *r.shape) or r.dim() != 2 or r.shape[1] != sum(counts):
        raise ValueError(f"log_probs {tuple(lp.shape)} must be (components, *rewards' shape "
                         f"{tuple(r.shape)}), with counts {tuple(counts)} adding up to the samples")
    if any(n < 2 or n % 2 for n in counts):
        raise ValueError(f"the halving needs an even number (>= 2) of samples of each component, "
                         f"not {tuple(counts)}")
    log_ref, log_q = lp[0].double(), mixture_log_q(lp, counts)
    curve = mixture_curve(r, log_ref, log_q, betas)
    kls = [kl for _, kl, _, _ in curve]
    # the halves' curves go on towards beta = 0, up to their own largest KL: a point is compared
    # wherever half the samples reach its KL, wherever the grid ends
    half_betas = [math.inf, *betas, *(min(betas) * 10.0 ** -k for k in range(1, 5))]
    halves = []
    for h in (0, 1):  # the first and the second half of every block: the same mixture, the same q
        cols = torch.cat([torch.arange(b.start, b.stop).chunk(2)[h] for b in blocks(counts)])
        half = mixture_curve(r[:, cols], log_ref[:, cols], log_q[:, cols], half_betas)
        kl, reward = zip(*sorted((k, rew) for _, k, rew, _ in half))
        halves.append(np.interp(kls, kl, reward, right=np.nan))
    shifts = (halves[0] + halves[1]) / 2 - np.array([rew for _, _, rew, _ in curve])
    reach = max(TRUST * math.log(counts[0]), *component_kls(lp, counts))
    trusted, ok = [False] * len(curve), True
    for i in sorted(range(len(curve)), key=lambda i: kls[i]):  # one stretch, from KL 0
        ok = ok and bool(abs(shifts[i]) <= HALVES_TOL) and kls[i] <= reach  # a NaN shift fails
        trusted[i] = ok
    return [dict(beta=beta, kl=kl, reward=reward, ess=ess, shift=float(shift), reach=reach,
                 trusted=t) for (beta, kl, reward, ess), shift, t in zip(curve, shifts, trusted)]


# ----------------------------------------------------------------------------- the samples


@torch.no_grad()
def reference_rewards(ref, scorer, prefixes, tok, M, seed, micro_batch=16, score_batch=64,
                      device="cpu") -> torch.Tensor:
    """(P, M) ground-truth rewards of M completions of the reference for each prefix: each prefix
    repeated M times, sampled under the protocol in micro-batches from one generator seeded `seed`
    (the generate() calls of evaluate.sample_and_measure on the repeated prefixes, so the same
    completions), then decoded and scored as evaluate.main scores."""
    g = torch.Generator(device=device).manual_seed(seed)
    prompts = [p for p in prefixes for _ in range(M)]
    comps = []
    for i in tqdm(range(0, len(prompts), micro_batch), desc=f"reference x{M}", mininterval=1.0):
        comps += sample_completions(ref, prompts[i: i + micro_batch], micro_batch, g, tok.eos_id,
                                    **PROTOCOL.sampling())
    texts = [tok.decode(p + c) for p, c in zip(prompts, comps)]
    return scorer(texts, batch_size=score_batch).view(len(prefixes), M)


@torch.no_grad()
def mixture_samples(folders, counts, scorer, prefixes, tok, seed, micro_batch=16, score_batch=64,
                    device="cpu", temperatures=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Completions of every prefix from each component policy, scored by the ground truth, with
    their log-probs under every component: rewards (P, N) and log_probs (C, P, N), N = sum(counts),
    each prefix's samples laid out component by component (counts[c] from folders[c]; folders[0]
    is the reference).

    Component c samples as reference_rewards does, from a generator seeded seed + c, so the
    reference's block is reference_rewards' completions; all are scored as it scores them.
    log pi_c(y|x) sums the completion's token log-probs under c by teacher forcing
    (model.token_logprobs over data.collate, as evaluate.sample_and_measure), EOS included: the
    probability of drawing exactly that completion, so the weights hold only under plain sampling
    (no top-k or top-p), and anything else is refused. Under CUDA's bf16 autocast the sampler's
    and the forward's log-probs differ by rounding, as evaluate.py's KL does.

    temperatures: one per component (default all 1): component c is folders[c]'s policy with its
    logits divided by temperatures[c], a sharper distribution below 1 (further from the
    reference, towards higher reward for a reward-trained policy), sampled and scored at that
    temperature; any such distribution is a valid proposal, its density being known. The
    reference's must be 1: it is pi_ref itself."""
    sampling = PROTOCOL.sampling()
    if (sampling["temperature"], sampling["top_k"], sampling["top_p"] or 1.0) != (1.0, None, 1.0):
        raise ValueError(f"mixture weights need each policy's own distribution: sampling at "
                         f"temperature 1 without top-k or top-p, not {sampling}")
    if len(folders) != len(counts) or min(counts, default=0) < 1:
        raise ValueError(f"one count (>= 1) per component: {len(folders)} folders, counts {counts}")
    temperatures = list(temperatures or [1.0] * len(folders))
    if len(temperatures) != len(folders) or temperatures[0] != 1.0 or min(temperatures) <= 0:
        raise ValueError(f"one positive temperature per component, the reference's 1: "
                         f"{temperatures} for {len(folders)} components")

    models = {}  # each folder loaded once, kept for both passes (a folder may recur at
    # several temperatures): the components' weights are all in memory at once

    def load(folder):
        if folder not in models:
            models[folder] = speed_up(GPT.from_pretrained(folder)).to(device).eval()
        if models[folder].config.vocab_size != tok.vocab_size:
            raise ValueError(f"{folder}: vocabulary of {models[folder].config.vocab_size}, not "
                             f"the reference tokenizer's {tok.vocab_size}")
        return models[folder]

    prompts, comps = [], []  # component by component, each prefix repeated counts[c] times
    for c, (folder, n) in enumerate(zip(folders, counts)):
        model, g = load(folder), torch.Generator(device=device).manual_seed(seed + c)
        block = [p for p in prefixes for _ in range(n)]
        for i in tqdm(range(0, len(block), micro_batch), desc=f"component {c} x{n}",
                      mininterval=1.0):
            comps += sample_completions(model, block[i: i + micro_batch], micro_batch, g,
                                        tok.eos_id, **dict(sampling, temperature=temperatures[c]))
        prompts += block
    texts = [tok.decode(p + c) for p, c in zip(prompts, comps)]
    rewards = scorer(texts, batch_size=score_batch).double().cpu()
    log_probs = torch.empty(len(folders), len(prompts), dtype=torch.float64)
    for c, folder in enumerate(folders):
        model = load(folder)
        for i in tqdm(range(0, len(prompts), micro_batch), desc=f"log-probs under {c}",
                      mininterval=1.0):
            x, m = collate(prompts[i: i + micro_batch], comps[i: i + micro_batch], tok.eos_id)
            x, m = x.to(device), m.to(device)
            with autocast(device):
                logits = model(x)
            log_probs[c, i: i + len(x)] = token_logprobs(
                logits, x, m, temperature=temperatures[c]).double().cpu()

    def by_prefix(t):  # [component][prefix][sample] -> [prefix][component][sample]
        parts = t.split([len(prefixes) * n for n in counts], dim=-1)
        return torch.cat([p.unflatten(-1, (len(prefixes), n)) for p, n in zip(parts, counts)], -1)

    return by_prefix(rewards), by_prefix(log_probs)


# ----------------------------------------------------------------------------- the command


@dataclass
class OptimumConfig:
    ref: str = arg("runs/sft", "the reference policy (the SFT checkpoint)")
    ground_truth: str = arg("siebert/sentiment-roberta-large-english",
                            "see reward.load_ground_truth")
    dataset: str = arg("stanfordnlp/imdb", "test prefixes come from its test split")
    out: str = arg("runs/optimum.jsonl",
                   "the curve (rewritten); the samples' rewards (and log-probs) beside it (.pt)")
    M: int = arg(64, "reference completions per prefix: alone, the estimated KL stays below "
                 "log M", "> 0")
    policies: tuple[str, ...] = arg((), "trained policies (checkpoint folders, or run folders: "
                                    "their last checkpoint) whose completions join the "
                                    "reference's, as samples of their mixture", "path")
    n_per_policy: int = arg(16, "completions per prefix from each of --policies (even)", "> 0")
    temperatures: tuple[float, ...] = arg((), "one per --policies: sample (and score) that policy "
                                          "at this temperature; none given: all 1", "> 0")
    n_prefixes: int = arg(PROTOCOL.n_test_prefixes, "held-out test prefixes (evaluate.py's)", "> 0")
    seed: int = arg(PROTOCOL.test_seed, "which prefixes, and the sampling", ">= 0")
    beta_min: float = arg(1e-4, "smallest beta: KL near log M for P(positive) rewards", "> 0")
    beta_max: float = arg(10.0, "largest beta: KL near 0", "> 0")
    n_betas: int = arg(41, "points on the curve, log-spaced in beta", "> 0")
    micro_batch: int = arg(16, "sequences per generate() call and per forward", "> 0")
    score_batch: int = arg(64, "texts per ground-truth batch", "> 0")
    device: str = arg("auto", "cuda > mps > cpu", "device")


def policy_folder(path: str) -> str:
    """The checkpoint folder of one of --policies (a run folder: its last checkpoint)."""
    try:
        return gpt_folder(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"--policies {path}: no checkpoint there ({e})") from None


def main(cfg: OptimumConfig):
    """Sample and score (or reuse the saved samples of the same models, prefixes, seed and
    counts), trace the curve, write it as rows {"method": "optimum", "estimator", "beta", "kl",
    "reward", "trusted", ...}: without --policies from M reference completions per prefix
    (optimum_curve, estimator "reference", trusted to TRUST log M); with them from M reference
    completions and n_per_policy of each policy (mixture_optimum, estimator "mixture", trusted by
    the halving and the reach, HALVES_TOL)."""
    check_fields(cfg)  # the ranges, and that every --policies path exists: no Run checks them
    if cfg.M < 2:
        raise ValueError(f"--M must be at least 2 (one sample has KL 0 at every beta), not {cfg.M}")
    if cfg.policies and (cfg.M % 2 or cfg.n_per_policy % 2):
        raise ValueError(f"with --policies, --M and --n_per_policy must be even (the trust rule "
                         f"halves every policy's samples), not {cfg.M} and {cfg.n_per_policy}")
    betas = log_betas(cfg.beta_min, cfg.beta_max, cfg.n_betas)
    device = get_device(cfg.device)
    if cfg.temperatures and len(cfg.temperatures) != len(cfg.policies):
        raise ValueError(f"--temperatures gives {len(cfg.temperatures)} values for "
                         f"{len(cfg.policies)} --policies: one each, or none")
    folders = [gpt_folder(cfg.ref)] + [policy_folder(p) for p in cfg.policies]
    temperatures = [1.0, *(cfg.temperatures or [1.0] * len(cfg.policies))]
    counts = [cfg.M] + [cfg.n_per_policy] * len(cfg.policies)
    where = os.path.dirname(os.path.abspath(cfg.out))
    rel = lambda p: os.path.relpath(os.path.abspath(p), where)  # the files move with their runs
    # the weights by size and mtime too: a model or ground truth retrained in place samples
    # again instead of reusing stale samples
    gt_stamp = file_stamp(cfg.ground_truth) if os.path.exists(cfg.ground_truth) else None
    stamps = [file_stamp(os.path.join(f, "model.safetensors")) for f in folders]
    key = dict(ref=rel(folders[0]), dataset=cfg.dataset, ground_truth=cfg.ground_truth,
               n_prefixes=cfg.n_prefixes, seed=cfg.seed, M=cfg.M, weights=stamps[:1] + [gt_stamp])
    if cfg.policies:
        key.update(policies=[rel(f) for f in folders[1:]], n_per_policy=cfg.n_per_policy,
                   weights=stamps + [gt_stamp], temperatures=temperatures)
    saved = os.path.splitext(cfg.out)[0] + (".mixture.pt" if cfg.policies else ".rewards.pt")
    cached = torch.load(saved) if os.path.exists(saved) else None
    if cached is not None and cached["key"] == key:
        samples = {k: v for k, v in cached.items() if k != "key"}
    else:
        tok = load_tokenizer(folders[0])
        prefixes = load_prefixes(cfg.dataset, "test", cfg.n_prefixes, cfg.seed, tok)
        scorer = load_ground_truth(cfg.ground_truth, device=device)
        if cfg.policies:
            samples = dict(zip(("rewards", "log_probs"), mixture_samples(
                folders, counts, scorer, prefixes, tok, cfg.seed, cfg.micro_batch,
                cfg.score_batch, device, temperatures)))
        else:
            ref = speed_up(GPT.from_pretrained(folders[0])).to(device).eval()
            samples = dict(rewards=reference_rewards(ref, scorer, prefixes, tok, cfg.M, cfg.seed,
                                                     cfg.micro_batch, cfg.score_batch, device))
        os.makedirs(where, exist_ok=True)
        atomic_torch_save(dict(key=key, **samples), saved)
    rewards = samples["rewards"]
    if cfg.policies:
        rows = [dict(method="optimum", estimator="mixture", **row, M=cfg.M,
                     n_per_policy=cfg.n_per_policy, components=len(folders), N=sum(counts),
                     n_prefixes=rewards.shape[0], seed=cfg.seed, ref=key["ref"])
                for row in mixture_optimum(rewards, samples["log_probs"], counts, betas)]
        for row in rows:
            row["shift"] = None if math.isnan(row["shift"]) else row["shift"]  # JSON has no NaN
    else:
        kl_max = math.log(cfg.M)
        rows = [dict(method="optimum", estimator="reference", beta=b, kl=kl, reward=rew, M=cfg.M,
                     n_prefixes=rewards.shape[0], kl_max=kl_max, trusted=kl <= TRUST * kl_max,
                     seed=cfg.seed, ref=key["ref"])
                for b, kl, rew in optimum_curve(rewards, betas)]
    write_jsonl(cfg.out, rows)
    return rows


if __name__ == "__main__":
    run_main(main, OptimumConfig)
