"""The KL-regularised optimum: the reference line of the reward-vs-KL frontier, estimated from
samples of the reference policy.

For the ground-truth reward r and the reference pi_ref, the best policy at trade-off beta,
argmax_pi E_pi[r] - beta KL(pi || pi_ref), is pi*_beta(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x)
(the paper's Eq. 4). No trained policy can lie above its (KL, reward) curve; this script draws
that curve from M completions of the reference per held-out test prefix, scored by the ground
truth, sampled and scored exactly as evaluate.py does.

    python -m theory.optimum --ref runs/sft --ground_truth siebert/sentiment-roberta-large-english \
        --M 64 --out runs/optimum.jsonl
"""

import math
import os
from dataclasses import dataclass

import torch
from tqdm import tqdm

from data import PROTOCOL, load_prefixes, load_tokenizer
from model import GPT, gpt_folder, sample_completions
from reward import load_ground_truth

from plumbing.flags import arg, check_fields
from plumbing.runs import run_main
from plumbing.speed import speed_up
from plumbing.utils import atomic_torch_save, file_stamp, get_device, write_jsonl

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


# ----------------------------------------------------------------------------- the command


@dataclass
class OptimumConfig:
    ref: str = arg("runs/sft", "the reference policy (the SFT checkpoint)")
    ground_truth: str = arg("siebert/sentiment-roberta-large-english",
                            "see reward.load_ground_truth")
    dataset: str = arg("stanfordnlp/imdb", "test prefixes come from its test split")
    out: str = arg("runs/optimum.jsonl",
                   "the curve (rewritten); the (P, M) rewards beside it (.pt)")
    M: int = arg(64, "reference completions per prefix: the estimated KL stays below log M", "> 0")
    n_prefixes: int = arg(PROTOCOL.n_test_prefixes, "held-out test prefixes (evaluate.py's)", "> 0")
    seed: int = arg(PROTOCOL.test_seed, "which prefixes, and the sampling", ">= 0")
    beta_min: float = arg(1e-4, "smallest beta: KL near log M for P(positive) rewards", "> 0")
    beta_max: float = arg(10.0, "largest beta: KL near 0", "> 0")
    n_betas: int = arg(41, "points on the curve, log-spaced in beta", "> 0")
    micro_batch: int = arg(16, "sequences per generate() call", "> 0")
    score_batch: int = arg(64, "texts per ground-truth batch", "> 0")
    device: str = arg("auto", "cuda > mps > cpu", "device")


def main(cfg: OptimumConfig):
    """Sample and score (or reuse the saved rewards of the same ref, prefixes, seed and M), trace
    the curve, write it as rows {"method": "optimum", "beta", "kl", "reward", "M", ...}."""
    check_fields(cfg)  # the ranges: this main has no Run to check them
    if cfg.M < 2:
        raise ValueError(f"--M must be at least 2 (one sample has KL 0 at every beta), not {cfg.M}")
    betas = log_betas(cfg.beta_min, cfg.beta_max, cfg.n_betas)
    device = get_device(cfg.device)
    ref_path = gpt_folder(cfg.ref)
    where = os.path.dirname(os.path.abspath(cfg.out))
    # the weights by size and mtime too: a reference or ground truth retrained in place samples
    # again instead of reusing stale rewards
    gt_stamp = file_stamp(cfg.ground_truth) if os.path.exists(cfg.ground_truth) else None
    key = dict(ref=os.path.relpath(os.path.abspath(ref_path), where), dataset=cfg.dataset,
               ground_truth=cfg.ground_truth, n_prefixes=cfg.n_prefixes, seed=cfg.seed, M=cfg.M,
               weights=[file_stamp(os.path.join(ref_path, "model.safetensors")), gt_stamp])
    saved = os.path.splitext(cfg.out)[0] + ".rewards.pt"
    cached = torch.load(saved) if os.path.exists(saved) else None
    if cached is not None and cached["key"] == key:
        rewards = cached["rewards"]
    else:
        tok = load_tokenizer(ref_path)
        prefixes = load_prefixes(cfg.dataset, "test", cfg.n_prefixes, cfg.seed, tok)
        ref = speed_up(GPT.from_pretrained(ref_path)).to(device).eval()
        scorer = load_ground_truth(cfg.ground_truth, device=device)
        rewards = reference_rewards(ref, scorer, prefixes, tok, cfg.M, cfg.seed, cfg.micro_batch,
                                    cfg.score_batch, device)
        os.makedirs(where, exist_ok=True)
        atomic_torch_save(dict(key=key, rewards=rewards), saved)
    kl_max = math.log(cfg.M)
    rows = [dict(method="optimum", beta=b, kl=kl, reward=rew, M=cfg.M,
                 n_prefixes=rewards.shape[0], kl_max=kl_max, trusted=kl <= TRUST * kl_max,
                 seed=cfg.seed, ref=key["ref"])
            for b, kl, rew in optimum_curve(rewards, betas)]
    write_jsonl(cfg.out, rows)
    return rows


if __name__ == "__main__":
    run_main(main, OptimumConfig)
