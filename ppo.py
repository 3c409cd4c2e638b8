"""PPO with a KL penalty (Ziegler et al. 2019; Stiennon et al. 2020), the RLHF baseline of the DPO
paper: "PPO" optimises a learned reward model, "PPO-GT" the ground-truth sentiment classifier.

One iteration: sample completions for a batch of IMDb prefixes (KV cache, the protocol of
data.py), or of a preference file's prompts (--prompts); score prefix + completion; per-token
reward = -kl_coef * (log pi - log pi_ref), plus the score on the last completion token; GAE;
several epochs of clipped policy and value updates over minibatches; then the adaptive KL
controller moves kl_coef toward the target KL.

Tiny CPU run (after sft.py and the label classifier of reward.py):
    python ppo.py --init runs/sft_tiny --reward gt --ground_truth runs/gt_tiny --dataset synthetic \
        --out_dir runs/ppo_tiny --steps 5 --batch_size 64 --gen_batch 64 --mini_batch 32 \
        --micro_batch 32 --lr 1e-4 --n_prompts 1000

On the prompts of a pairs or completions file of hh_tldr/preferences.py (the HH and TL;DR
experiments), scored by the Bradley-Terry RM trained on its comparisons (reward.py train):
    python ppo.py --init runs/hh_tiny/sft --rm runs/hh_tiny/rm \
        --prompts runs/hh_tiny/data/train.jsonl --max_new_tokens 24 --out_dir runs/ppo_hh_tiny \
        --steps 5 --batch_size 64 --gen_batch 64 --mini_batch 32 --micro_batch 32 --lr 1e-4
"""

import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from data import (
    PROTOCOL,
    collate,
    is_token_ids,
    last_index,
    load_prefixes,
    load_tokenizer,
    stream_indices,
)
from model import GPT, gpt_folder, sample_completions, token_logprobs
from reward import load_ground_truth, load_reward_model, rm_sequence

from plumbing.flags import arg
from plumbing.runs import Run, run_main
from plumbing.speed import adamw, speed_up
from plumbing.utils import autocast, read_safetensors, save_head, seed_for

# ----------------------------------------------------------------------------- the math
# Tensors are (B, T): one column per completion token, `mask` True at real completion tokens
# (contiguous within a row), as model.token_logprobs lays them out.


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x, mask, eps=1e-8):
    """Standardise x over the masked entries of the whole batch (advantage whitening)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_penalized_rewards(logprobs, ref_logprobs, scores, mask, kl_coef):
    """Per-token rewards (B, T): -kl_coef * (log pi - log pi_ref) on every completion token, plus
    the sequence score (B,) on the last one."""
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = last_index(mask)[:, None]
    return rewards.scatter_add(-1, last, scores[:, None].to(rewards.dtype))


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised advantage estimation (Schulman et al. 2016) over (B, T) rows whose valid
    entries are contiguous; the state after a row's last token is terminal (value 0).
    A_t = delta_t + gamma lam A_{t+1},  delta_t = r_t + gamma V_{t+1} - V_t.
    Returns (advantages, returns = advantages + values), zero outside the mask."""
    mask = mask.to(values.dtype)
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_adv) * mask[:, t]
        # where t is padding, carry nothing back: the next valid step sees a terminal state
        next_value, next_adv = values[:, t] * mask[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange):
    """PPO's clipped surrogate (Schulman et al. 2017, Eq. 7), as a loss to minimise.
    Returns (loss, clipfrac, approx_kl), approx_kl = E[(r - 1) - log r] (non-negative)."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1).abs() > cliprange).float(), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, clipfrac, approx_kl


def value_loss(values, old_values, returns, mask, cliprange_value):
    """Clipped value loss: 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip within old V +- clip."""
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def update_kl_coef(kl_coef, kl, target, horizon, n_samples):
    """Adaptive KL controller (Ziegler et al. 2019, §2.2): beta <- beta (1 + e n / horizon) with
    e = clip(KL / target - 1, -0.2, 0.2). target None: a fixed coefficient."""
    if target is None:
        return kl_coef
    error = min(max(kl / target - 1, -0.2), 0.2)
    return kl_coef * (1 + error * n_samples / horizon)


class RunningMoments:
    """Running mean and std of the scores (Chan et al.'s parallel update), for normalisation."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, x: torch.Tensor):
        n, m, v = x.numel(), x.mean().item(), x.var(unbiased=False).item()
        total = self.count + n
        delta = m - self.mean
        self.var = (self.var * self.count + v * n + delta ** 2 * self.count * n / total) / total
        self.mean, self.count = self.mean + delta * n / total, total

    def normalize(self, x):
        return (x - self.mean) / math.sqrt(self.var + 1e-8)


# ----------------------------------------------------------------------------- config


@dataclass
class PPOConfig:
    out_dir: str = arg("runs/ppo", "run folder")
    init: str = arg("runs/sft", "SFT checkpoint: the policy's start and the frozen reference")
    reward: str = arg("rm", "rm: learned reward model (PPO); gt: the ground truth (PPO-GT)")
    rm: str = arg("runs/rm", "reward-model run folder (reward.py train --objective bt)")
    ground_truth: str = arg("siebert/sentiment-roberta-large-english", "for --reward gt")
    dataset: str = arg("stanfordnlp/imdb", "prompts: prefixes of its train split")
    prompts: str | None = arg(None, "a pairs or completions JSONL (hh_tldr/preferences.py): its "
                              "distinct prompts instead of --dataset's prefixes", "file")
    n_prompts: int = arg(25000, "size of the prompt pool (--prompts: a seeded choice of the "
                         "file's prompts, in file order; all if it has fewer)", "> 0")
    max_new_tokens: int | None = arg(None, "completion length cap; None: the protocol's 48",
                                     "> 0")
    seed: int = arg(0, "prompts, sampling, minibatch order", ">= 0")
    steps: int = arg(100, "PPO iterations", "> 0")
    batch_size: int = arg(1024, "rollouts per iteration (the paper's PPO: 1024)", "> 0")
    gen_batch: int = arg(128, "rollouts per generate call", "> 0")
    mini_batch: int = arg(256, "rollouts per optimizer step", "> 0")
    micro_batch: int = arg(16, "rollouts per forward; accumulation makes up the minibatch", "> 0")
    ppo_epochs: int = arg(4, "passes over the rollouts per iteration", "> 0")
    lr: float = arg(1.41e-5, "Adam learning rate (TRL's sentiment example)", "> 0")
    init_kl_coef: float = arg(0.2, "starting KL coefficient beta", ">= 0")
    target_kl: float | None = arg(
        6.0, "adaptive controller target (nats per sequence); None: fixed", "> 0")
    horizon: int = arg(10000, "controller horizon (samples)", "> 0")
    gamma: float = arg(1.0, "discount", (0.0, 1.0, "]"))
    lam: float = arg(0.95, "GAE lambda", (0.0, 1.0, "]"))
    cliprange: float = arg(0.2, "policy ratio clip", "> 0")
    cliprange_value: float = arg(0.2, "value clip", "> 0")
    vf_coef: float = arg(0.1, "value loss weight", ">= 0")
    grad_clip: float = arg(1.0, "max global gradient norm", "> 0")
    # Score normalisation is our choice, not the paper's: the paper does not say how its PPO
    # treated the scores. It is common PPO practice: Ziegler et al. (2019) normalise their reward
    # model to mean 0 and std 1 under the initial policy, and TRL later added running scaling and
    # normalisation (use_score_scaling, use_score_norm, Aug. 2023), which RunningMoments follows.
    normalize_score: bool = arg(False,
                                "standardise scores by their running mean and std (our choice)")
    whiten_advantages: bool = arg(True, "standardise advantages over each iteration's batch")
    score_batch: int = arg(64, "texts per scoring batch", "> 0")
    eval_every: int = arg(
        10, "validation reward: the mean score of the last N iterations' rollouts", "> 0")
    patience: int = arg(0,
                        "stop once that reward has not improved for N evaluations; 0: off", ">= 0")
    save_every: int = arg(10, "checkpoint every N iterations", "> 0")
    device: str = arg("auto", "cuda > mps > cpu", "device")
    overwrite: bool = arg(False, "delete an existing run folder with another config")


# ----------------------------------------------------------------------------- the loop
# A value head on the policy's own backbone (as TRL's PPO, whose settings the paper used): one
# forward gives log-probs and values, and it costs one model of memory instead of two. The price
# is that value-loss gradients reach the policy's features, hence the small vf_coef.


class ValueHead(nn.Linear):
    """V(s) from the policy's final hidden state, zero at the start (the returns are learned from
    nothing rather than from a random guess)."""

    def __init__(self, n_embd: int):
        super().__init__(n_embd, 1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def save_pretrained(self, folder: str):
        save_head(self, os.path.join(folder, "value_head.safetensors"))


def forward_lp_values(policy, value_head, x, m, temperature):
    """Per-token log-probs (B, T-1) of x's tokens and values (B, T-1) of the states before them,
    plus the logits (B, T, V) at the sampling temperature, for the entropy."""
    with autocast(str(x.device)):
        h = policy.hidden(x)
        logits = policy.lm_head(h)
        values = value_head(h[:, :-1]).squeeze(-1).float()
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    return token_logprobs(logits, x, m, reduction="none"), values, logits


def entropy(logits, mask):
    """Mean entropy of the next-token distributions at the masked positions; logits (B, T, V) at
    the sampling temperature, as the log-probs (position t predicts token t + 1)."""
    lg = logits[:, :-1]
    return masked_mean(torch.logsumexp(lg, -1) - (lg.softmax(-1) * lg).sum(-1), mask)


@torch.no_grad()
def rollout_stats(policy, value_head, ref, x, m, micro_batch):
    """Old log-probs, values and reference log-probs of a rollout batch, micro-batched."""
    out = [], [], []
    for i in range(0, len(x), micro_batch):
        xb, mb = x[i: i + micro_batch], m[i: i + micro_batch]
        lp, v, _ = forward_lp_values(policy, value_head, xb, mb, PROTOCOL.temperature)
        with autocast(str(x.device)):
            ref_lp = token_logprobs(ref(xb), xb, mb, reduction="none",
                                    temperature=PROTOCOL.temperature)
        for acc, t in zip(out, (lp, v, ref_lp)):
            acc.append(t)
    return [torch.cat(t) for t in out]


def ppo_update(cfg, run, policy, value_head, opt, x, m, mask, old_lp, old_values, advantages,
               returns, seed):
    """ppo_epochs passes over the rollouts in shuffled minibatches: one clipped policy + value
    step per minibatch (micro-batched). Returns the mean statistics of the updates."""
    policy.train()
    params = [p for group in opt.param_groups for p in group["params"]]
    g_perm = torch.Generator().manual_seed(seed)
    sums = dict.fromkeys(["loss/train", "ppo/approx_kl", "ppo/clipfrac", "ppo/value_loss",
                          "ppo/entropy", "grad_norm"], 0.0)
    n_updates, n_micro = 0, 0
    for epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(cfg.batch_size, generator=g_perm)
        for s in range(0, cfg.batch_size, cfg.mini_batch):
            for u in range(s, s + cfg.mini_batch, cfg.micro_batch):
                idx = perm[u: u + cfg.micro_batch].to(x.device)
                lp, values, logits = forward_lp_values(policy, value_head, x[idx], m[idx],
                                                       PROTOCOL.temperature)
                mk = mask[idx]
                pg, clipfrac, approx_kl = policy_loss(lp, old_lp[idx], advantages[idx], mk,
                                                      cfg.cliprange)
                vf = value_loss(values, old_values[idx], returns[idx], mk, cfg.cliprange_value)
                loss = pg + cfg.vf_coef * vf
                (loss * cfg.micro_batch / cfg.mini_batch).backward()
                for k, v in zip(("loss/train", "ppo/approx_kl", "ppo/clipfrac", "ppo/value_loss"),
                                (loss.detach(), approx_kl, clipfrac, vf.detach())):
                    sums[k] += v  # kept on the device: no host sync per micro-batch
                if epoch == 0:  # the entropy needs a full softmax: measured on one pass
                    with torch.no_grad():
                        sums["ppo/entropy"] += entropy(logits, mk)
                n_micro += 1
            run.check(sums["loss/train"])
            sums["grad_norm"] += torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            n_updates += 1
    sums = dict(zip(sums, torch.stack([torch.as_tensor(v, device=x.device).float()
                                       for v in sums.values()]).tolist()))  # one host sync
    per = {"grad_norm": n_updates, "ppo/entropy": n_micro // cfg.ppo_epochs}
    return {k: v / per.get(k, n_micro) for k, v in sums.items()}


def score_rollouts(cfg, scorer, tok, prompts, comps):
    """(B,) scores of prompt + completion. The learned RM (--reward rm) reads the sampled token
    ids, as it was trained on the pairs' ids (reward.rm_tokens): decoding and re-encoding does
    not always give them back; a sequence longer than its context keeps its last tokens, as the
    win-rate judge reads it (reward.rm_sequence), so a long prompt never cuts the completion
    off. The ground truth (--reward gt) reads text, as everywhere else."""
    if cfg.reward == "rm":
        T = scorer.model.gpt.config.block_size
        seqs = [rm_sequence(p, c, tok.eos_id, T) for p, c in zip(prompts, comps)]
        return scorer.score_ids(seqs, batch_size=cfg.score_batch, progress=False)
    seqs = [p + c for p, c in zip(prompts, comps)]
    return scorer([tok.decode(s) for s in seqs], batch_size=cfg.score_batch, progress=False)


def sampling(cfg) -> dict:
    """GPT.generate's settings: the protocol's (data.py), with --max_new_tokens if given."""
    return dict(PROTOCOL.sampling(), max_new_tokens=cfg.max_new_tokens or PROTOCOL.max_new_tokens)


def preference_prompts(cfg, tok) -> list[list[int]]:
    """The prompt pool of --prompts: the distinct prompt_ids of a pairs or completions file in
    file order (winrate.load_test), n_prompts of them by a seeded choice; they must be ids of the
    policy's tokenizer (its vocabulary, and its decoding gives the file's prompt text)."""
    from hh_tldr.winrate import choose_prompts, load_test  # the HH/TL;DR files' reader

    _, rows = load_test(cfg.prompts)
    rows = choose_prompts(rows, cfg.n_prompts, cfg.seed)
    pool = [p for p, *_ in rows]
    if not all(is_token_ids(p) and max(p) < tok.vocab_size for p in pool) or \
            tok.decode(pool[0]) != rows[0][1]:
        raise ValueError(f"{cfg.prompts}: its prompt_ids are not ids of the policy's tokenizer "
                         f"({tok.vocab_size} ids, {cfg.init}): a file written with another "
                         f"--tokenizer?")
    return pool


def load(cfg: PPOConfig, run: Run):
    """The policy (from the SFT checkpoint, or the run's last one) and its value head, the frozen
    reference, the tokenizer, the prompt pool and the scorer (learned RM or ground truth)."""
    init, device = gpt_folder(cfg.init), run.device
    policy = speed_up(GPT.from_pretrained(run.resume_from or init)).to(device).train()
    value_head = ValueHead(policy.config.n_embd)
    if run.resume_from:
        value_head.load_state_dict(read_safetensors(os.path.join(run.resume_from,
                                                                 "value_head.safetensors")))
    value_head.to(device)
    ref = speed_up(GPT.from_pretrained(init)).to(device).eval().requires_grad_(False)
    tok = load_tokenizer(init)
    pool = (preference_prompts(cfg, tok) if cfg.prompts else
            load_prefixes(cfg.dataset, "train", cfg.n_prompts, cfg.seed, tok))
    keep = policy.config.block_size - sampling(cfg)["max_new_tokens"]
    if keep < 1:
        raise ValueError(f"--max_new_tokens leaves no room for a prompt in {init}'s context "
                         f"window of {policy.config.block_size}")
    pool = [p[-keep:] for p in pool]  # a long prompt keeps its end (TL;DR's: the "TL;DR:" cue)
    return policy, value_head, ref, tok, pool, load_scorer(cfg, tok, device)


def load_scorer(cfg, tok, device):
    """What scores the rollouts: the learned RM (--reward rm) or the ground truth (gt)."""
    if cfg.reward == "rm":  # the learned RM reads the sampled ids: it must share their vocabulary
        scorer = load_reward_model(cfg.rm, device=device)
        scorer.check_tokenizer(tok, f"the policy {cfg.init}")
        return scorer
    return load_ground_truth(cfg.ground_truth, device=device)


@torch.no_grad()
def rollout(cfg, policy, value_head, ref, scorer, tok, prompts, generator, kl_coef, moments):
    """Sample completions of `prompts` with the current policy, score them, and turn scores and
    KL into per-token rewards, advantages and returns (GAE). Returns a dict of (B, T) tensors
    (and the raw scores, the sequence KL and the completions)."""
    device = next(policy.parameters()).device
    policy.eval()
    comps = sample_completions(policy, prompts, cfg.gen_batch, generator, tok.eos_id,
                               **sampling(cfg))
    x, m = collate(prompts, comps, tok.eos_id)
    x, m = x.to(device), m.to(device)
    mask = m[:, 1:].float()  # (B, T-1), aligned with token_logprobs
    old_lp, old_values, ref_lp = rollout_stats(policy, value_head, ref, x, m, cfg.micro_batch)
    raw_scores = score_rollouts(cfg, scorer, tok, prompts, comps).to(device).float()
    scores = raw_scores
    if cfg.normalize_score:
        moments.update(raw_scores)
        scores = moments.normalize(raw_scores)
    rewards = kl_penalized_rewards(old_lp, ref_lp, scores, mask, kl_coef)
    advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = whiten(advantages, mask)
    kl_seq = ((old_lp - ref_lp) * mask).sum(-1).mean().item()
    return dict(x=x, m=m, mask=mask, old_lp=old_lp, old_values=old_values, advantages=advantages,
                returns=returns, raw_scores=raw_scores, kl_seq=kl_seq, comps=comps)


def main(cfg: PPOConfig, on_checkpoint=None):
    """Train; returns the log's rows. on_checkpoint(run folder): called after each checkpoint."""
    run = Run(cfg)  # (the lines on `run` are the run folder's plumbing: plumbing/runs.py)
    check_config(cfg)
    if run.done:
        return run.history
    policy, value_head, ref, tok, pool, scorer = load(cfg, run)
    device = run.device
    run.start()  # the inputs are good: now the run folder
    params = list(policy.parameters()) + list(value_head.parameters())
    opt = adamw(params, cfg.lr, device, weight_decay=0.0)  # = Adam
    state = run.restore(opt)
    kl_coef, moments = state.get("kl_coef", cfg.init_kl_coef), RunningMoments()
    moments.__dict__.update(state.get("moments", {}))
    # PPO's validation signal: every eval_every iterations, the mean reward of those iterations'
    # rollouts (fresh samples, scored before the policy trains on them). The KL controller holds
    # the KL near its target, so this is the reward at the target KL once the KL is there.
    run.stop_when_stalled("eval/score", cfg.patience, mode="max")

    for step in run.steps(cfg.steps, desc=f"ppo {os.path.basename(cfg.out_dir)}"):
        # ---- rollout: sample, score, and value the batch with the current policy
        t0 = time.time()
        prompts = [pool[i] for i in stream_indices(len(pool), cfg.batch_size, step, cfg.seed)]
        g = torch.Generator(device=device).manual_seed(seed_for(cfg.seed, step - 1))
        b = rollout(cfg, policy, value_head, ref, scorer, tok, prompts, g, kl_coef, moments)
        t_rollout = time.time() - t0

        # ---- update: ppo_epochs passes of clipped policy + value steps over minibatches
        t0 = time.time()
        stats = ppo_update(cfg, run, policy, value_head, opt, b["x"], b["m"], b["mask"],
                           b["old_lp"], b["old_values"], b["advantages"], b["returns"],
                           seed_for(cfg.seed, step - 1))
        t_update = time.time() - t0

        kl_seq, n_tokens = b["kl_seq"], sum(map(len, prompts)) + sum(map(len, b["comps"]))
        row = {"score/mean": b["raw_scores"].mean().item(), "kl/seq": kl_seq, "kl/coef": kl_coef,
               "lr": cfg.lr, "time/rollout": t_rollout, "time/update": t_update,
               "tokens_per_s": run.tokens_per_s(n_tokens),
               # through the policy with a backward pass (ppo_epochs passes), and sampled
               "tokens": cfg.ppo_epochs * n_tokens, "tokens/sampled": n_tokens}
        row.update(stats)
        if run.due(cfg.eval_every):
            window = [r["score/mean"] for r in run.history
                      if r["step"] > run.step - cfg.eval_every] + [row["score/mean"]]
            row["eval/score"] = sum(window) / len(window)
        kl_coef = update_kl_coef(kl_coef, kl_seq, cfg.target_kl, cfg.horizon, cfg.batch_size)
        run.log(row, show=("score/mean", "kl/seq"))
        if run.due(cfg.save_every):
            run.save(opt, policy, tok, value_head, kl_coef=kl_coef,
                     moments=dict(moments.__dict__))
            if on_checkpoint and run.main_process:  # the process that wrote it
                on_checkpoint(run.dir)
    return run.finish()


def check_config(cfg: PPOConfig):
    if cfg.reward not in ("rm", "gt"):
        raise ValueError(f"--reward must be rm or gt, not {cfg.reward!r}")
    if cfg.prompts and cfg.reward == "gt":
        raise ValueError("--reward gt: a preference file (--prompts) has no ground truth, only "
                         "human comparisons; score with the RM trained on them (--reward rm)")
    if cfg.batch_size % cfg.mini_batch or cfg.mini_batch % cfg.micro_batch:
        raise ValueError("batch_size must be a multiple of mini_batch, and mini_batch of "
                         "micro_batch")


if __name__ == "__main__":
    run_main(main, PPOConfig)
