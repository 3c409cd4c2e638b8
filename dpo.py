"""Direct Preference Optimization (Rafailov et al. 2023) and the pairwise baselines on a pairs file.

The losses are pure functions of four summed log-probs per pair; the loop initialises the policy
from the SFT checkpoint, computes the reference log-probs once (cached on disk, so a beta sweep
never recomputes them and the loop holds no reference model), and does one forward pass over the
concatenated chosen + rejected batch per step.

Tiny CPU run (after sft.py and pairs.py):
    python dpo.py --init runs/sft_tiny --pairs runs/pairs_tiny/pairs.jsonl --out_dir runs/dpo_tiny \
        --steps 20 --batch_size 16 --micro_batch 16 --lr 1e-4 --warmup 5
Several GPUs (the same global batch of 64 pairs, split across processes):
    torchrun --nproc_per_node 4 dpo.py --init runs/sft --pairs runs/pairs/pairs.jsonl --beta 0.1
"""

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import (
    check_held_out,
    check_pairs,
    collate_pairs,
    load_tokenizer,
    split_pairs,
    stream_indices,
)
from model import GPT, gpt_folder, token_logprobs

from plumbing.flags import arg
from plumbing.runs import Run, run_main
from plumbing.speed import adamw, speed_up
from plumbing.utils import (
    atomic_torch_save,
    autocast,
    autocast_dtype,
    file_stamp,
    lr_at,
    read_jsonl,
)

LOSSES = ("dpo", "ipo", "hinge", "simpo", "unlikelihood", "unlikelihood_token")

# ----------------------------------------------------------------------------- losses


def preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                    ref_rejected_logps, beta, loss_type="dpo", label_smoothing=0.0,
                    reference_free=False):
    """Per-example preference losses and the implicit rewards, all shapes (B,).

    Inputs are sequence log-probs summed over completion tokens: log pi(y|x) for the chosen
    (y_w) and rejected (y_l) completions under the policy and the frozen reference. With
    h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]:
      "dpo":   -log sigmoid(beta h)                                    (paper Eq. 7)
               with label_smoothing e: -(1-e) log sigmoid(beta h) - e log sigmoid(-beta h)
               (conservative DPO: the labels are flipped with probability e)
      "ipo":   (h - 1/(2 beta))^2                          (Azar et al. 2023; their tau = beta)
      "hinge": max(0, 1 - beta h)                                (SLiC, Zhao et al. 2023)
    reference_free: pi_ref is taken as uniform, i.e. h = log pi(y_w) - log pi(y_l).
    Returns (losses, chosen_rewards, rejected_rewards), the rewards from implicit_rewards.
    """
    policy_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = 0.0 if reference_free else ref_chosen_logps - ref_rejected_logps
    h = policy_logratios - ref_logratios
    if loss_type == "dpo":
        losses = (-F.logsigmoid(beta * h) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * h) * label_smoothing)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}: dpo, ipo or hinge")
    return (losses, *implicit_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                      ref_rejected_logps, beta))


def implicit_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                     ref_rejected_logps, beta):
    """beta * (log pi - log pi_ref) of the chosen and of the rejected completions, (B,) each,
    detached: the implicit reward of Eq. 5 up to the partition term, logged for every loss."""
    return (beta * (policy_chosen_logps - ref_chosen_logps).detach(),
            beta * (policy_rejected_logps - ref_rejected_logps).detach())


def simpo_loss(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths,
               beta, gamma_beta_ratio):
    """SimPO (Meng et al. 2024), per example (B,): reference-free and length-normalised,
    -log sigmoid(beta [log pi(y_w|x) / |y_w| - log pi(y_l|x) / |y_l|] - gamma), gamma = the
    target reward margin, written as gamma_beta_ratio * beta (as SimPO's own code does).

    The log-probs are summed over the completions' tokens, (B,) each; the lengths are their
    token counts, (B,) each. No reference model: its implicit reward is beta times the mean
    log-prob per token, not a log-ratio to pi_ref (dpo.py still logs DPO's log-ratio rewards
    for it, as for every loss, so that runs compare on one scale).
    """
    h = policy_chosen_logps / chosen_lengths - policy_rejected_logps / rejected_lengths
    return -F.logsigmoid(beta * (h - gamma_beta_ratio))


def unlikelihood_loss(policy_chosen_logps, policy_rejected_logps, alpha):
    """The paper's Unlikelihood baseline, per example (B,): -log pi(y_w|x) + alpha log pi(y_l|x).

    The paper (§6, Baselines): "Unlikelihood, which simply optimizes the policy to maximize the
    probability assigned to y_w and minimize the probability assigned to y_l; we use an optional
    coefficient alpha in [0, 1] on the 'unlikelihood' term." Nothing bounds log pi(y_l) from
    below, so this unconstrained likelihood minimisation can drive the model to degenerate text
    (the paper's App. C.3 shows such samples): that is the baseline's nature, not a bug.
    """
    return -policy_chosen_logps + alpha * policy_rejected_logps


def token_unlikelihood_loss(policy_chosen_logps, rejected_token_logps, rejected_mask, alpha):
    """Welleck et al.'s (2019) token-level form, per example (B,):
    -log pi(y_w|x) - alpha * sum_t log(1 - pi(y_l,t | x, y_l,<t)).

    rejected_token_logps (B, T) per-token log-probs of the rejected completion, rejected_mask
    (B, T) True at its tokens. Unlike the sequence form it is bounded below (each term >= 0).
    """
    p = rejected_token_logps.exp().clamp(max=1 - 1e-6)
    ul = -(torch.log1p(-p) * rejected_mask).sum(-1)
    return -policy_chosen_logps + alpha * ul


# ----------------------------------------------------------------------------- config


@dataclass
class DPOConfig:
    out_dir: str = arg("runs/dpo", "run folder")
    init: str = arg("runs/sft", "SFT checkpoint (or run folder: its last checkpoint)")
    ref: str | None = arg(None, "reference checkpoint (default: init)")
    pairs: str = arg("runs/pairs/pairs.jsonl", "pairs file written by pairs.py")
    seed: int = arg(0, "data order", ">= 0")
    loss: str = arg("dpo", "dpo | ipo | hinge | simpo | unlikelihood | unlikelihood_token")
    beta: float = arg(0.1,
                      "KL strength beta (paper default 0.1; IMDb sweep 0.05, 0.1, 1, 5)", "> 0")
    alpha: float = arg(1.0, "unlikelihood coefficient (IMDb sweep 0.05, 0.1, 0.5, 1)", "> 0")
    label_smoothing: float = arg(0.0,
                                 "conservative DPO: assumed label-flip probability", (0.0, 0.5))
    reference_free: bool = arg(False, "ignore the reference (uniform pi_ref)")
    gamma_beta_ratio: float = arg(0.5, "SimPO: its target margin gamma as a fraction of beta",
                                  ">= 0")
    steps: int | None = arg(None,
                            "optimizer steps (None: one epoch over the training pairs)", "> 0")
    batch_size: int = arg(64, "pairs per optimizer step (App. B: 64)", "> 0")
    micro_batch: int = arg(8, "pairs per forward; accumulation makes up the batch", "> 0")
    lr: float = arg(1e-6, "RMSprop learning rate (App. B: 1e-6)", "> 0")
    warmup: int = arg(150, "linear warm-up steps (App. B: 150), then constant", ">= 0")
    optimizer: str = arg("rmsprop", "rmsprop (paper) | adamw")
    grad_clip: float = arg(10.0, "max global gradient norm", "> 0")
    eval_size: int = arg(256, "held-out pairs (whole prompts) for loss/eval; 0: none", ">= 0")
    split_seed: int = arg(
        0, "which prompts are held out (data.split_pairs); one for a whole sweep", ">= 0")
    eval_every: int = arg(100, "held-out metrics every N steps", "> 0")
    patience: int = arg(
        0, "stop once the held-out loss has not improved for N evaluations; 0: off", ">= 0")
    save_every: int = arg(100, "checkpoint every N steps (the frontier evaluates each)", "> 0")
    device: str = arg("auto", "cuda > mps > cpu", "device")
    overwrite: bool = arg(False, "delete an existing run folder with another config")


# ----------------------------------------------------------------------------- reference cache


def concatenated_logps(model, rows, pad_id, per_token=False):
    """Summed completion log-probs of chosen and rejected in ONE forward over a (2B, T) batch:
    returns (chosen (B,), rejected (B,)), plus the rejected per-token log-probs and mask if
    per_token (for the token-level unlikelihood)."""
    device = next(model.parameters()).device
    x, m = collate_pairs(rows, pad_id)
    x, m = x.to(device), m.to(device)
    with autocast(str(device)):
        logits = model(x)
    tok_lp = token_logprobs(logits, x, m, reduction="none")  # (2B, T-1)
    seq = tok_lp.sum(-1)
    B = len(rows)
    if per_token:
        return seq[:B], seq[B:], tok_lp[B:], m[B:, 1:]
    return seq[:B], seq[B:]


def reference_logps(ref_path: str, pairs_path: str, rows, pad_id, device, micro_batch):
    """Reference log-probs of every pair, computed once per (reference checkpoint, pairs file,
    precision) and cached beside the pairs file. Returns (chosen (N,), rejected (N,)) float32 on
    CPU. The precision (device type and autocast dtype) is part of the key: the policy's step-0
    log-probs equal the reference's, and the loss is log 2, only if both ran at one precision;
    a CPU fp32 cache read under CUDA bf16 would be off by the bf16 rounding."""
    device = str(device)
    precision = f"{torch.device(device).type}:{autocast_dtype(device) or torch.float32}"
    key = hashlib.sha256((file_stamp(os.path.join(ref_path, "model.safetensors")) + "|"
                          + file_stamp(pairs_path) + "|" + precision).encode()).hexdigest()[:16]
    cache = os.path.join(os.path.dirname(os.path.abspath(pairs_path)), "ref_logps",
                         f"{os.path.basename(pairs_path)}.{key}.pt")
    if os.path.exists(cache):
        return torch.load(cache)
    ref = speed_up(GPT.from_pretrained(ref_path)).to(device).eval()
    out = sequence_logps(ref, rows, pad_id, micro_batch)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    atomic_torch_save(out, cache)
    return out


@torch.no_grad()
def sequence_logps(model, rows, pad_id, micro_batch, progress=True):
    """(chosen (N,), rejected (N,)) summed completion log-probs of every pair under `model`,
    float32 on the CPU, micro_batch pairs per forward."""
    chosen, rejected = [], []
    for i in tqdm(range(0, len(rows), micro_batch), desc="reference log-probs",
                  mininterval=1.0, disable=not progress):
        c, r = concatenated_logps(model, rows[i: i + micro_batch], pad_id)
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    return torch.cat(chosen), torch.cat(rejected)


# ----------------------------------------------------------------------------- the loop


def batch_loss(cfg, model, rows, ref_c, ref_r, pad_id):
    """Mean loss of a micro-batch and its per-example statistics."""
    device = next(model.parameters()).device
    ref_c, ref_r = ref_c.to(device), ref_r.to(device)
    if cfg.loss == "unlikelihood_token":
        pc, pr, rej_tok, rej_mask = concatenated_logps(model, rows, pad_id, per_token=True)
        losses = token_unlikelihood_loss(pc, rej_tok, rej_mask, cfg.alpha)
    else:
        pc, pr = concatenated_logps(model, rows, pad_id)
        if cfg.loss == "unlikelihood":
            losses = unlikelihood_loss(pc, pr, cfg.alpha)
        elif cfg.loss == "simpo":  # its length normalisation: the completions' token counts
            lengths = [torch.tensor([len(r[k]) for r in rows], device=device, dtype=pc.dtype)
                       for k in ("chosen_ids", "rejected_ids")]
            losses = simpo_loss(pc, pr, *lengths, cfg.beta, cfg.gamma_beta_ratio)
        else:
            losses = preference_loss(pc, pr, ref_c, ref_r, cfg.beta, cfg.loss,
                                     cfg.label_smoothing, cfg.reference_free)[0]
    # logged for every loss type: DPO's beta log-ratios to the reference (SimPO too, which trains
    # without one), so that every run's rewards/* read on one scale
    rc, rr = implicit_rewards(pc, pr, ref_c, ref_r, cfg.beta)
    stats = {"rewards/chosen": rc, "rewards/rejected": rr, "rewards/margins": rc - rr,
             "rewards/accuracy": (rc > rr).float(), "logps/chosen": pc.detach(),
             "logps/rejected": pr.detach()}
    return losses.mean(), losses.detach(), stats


@torch.no_grad()
def evaluate_pairs(cfg, model, rows, idx, ref_c, ref_r, pad_id):
    model.eval()
    sums, n = {}, 0
    for i in range(0, len(idx), cfg.micro_batch):
        b = idx[i: i + cfg.micro_batch]
        _, losses, stats = batch_loss(cfg, model, [rows[j] for j in b], ref_c[b], ref_r[b], pad_id)
        for k, v in [("loss/eval", losses)] + list(stats.items()):
            sums[k] = sums.get(k, 0.0) + v.sum().item()
        n += len(b)
    model.train()
    return {k if k == "loss/eval" else f"eval/{k}": v / n for k, v in sums.items()}


def optimizer(cfg, model, device):
    return (torch.optim.RMSprop(model.parameters(), lr=cfg.lr) if cfg.optimizer == "rmsprop"
            else adamw(model.parameters(), cfg.lr, device, weight_decay=0.0))  # (= Adam)


def train_step(cfg, run, ddp, opt, rows, batch, ref_c, ref_r, pad_id) -> dict:
    """One optimizer step on the pairs rows[i] for i in batch (the global batch: this process
    takes its share, in micro-batches); returns the step's log row."""
    model = getattr(ddp, "module", ddp)
    lr = lr_at(run.step, cfg.lr, cfg.warmup)
    for g in opt.param_groups:
        g["lr"] = lr
    accum = run.micro_batches(cfg.batch_size, cfg.micro_batch)  # per process
    sums, n_tokens = {}, 0
    for k in range(accum):
        j = k * run.world + run.rank  # this process's share of the global batch
        b = batch[j * cfg.micro_batch: (j + 1) * cfg.micro_batch]
        with run.accumulate(ddp, k, accum):  # one gradient all-reduce per step
            # chosen and rejected in one forward; the loss of Eq. 7 (or a variant)
            loss, losses, stats = batch_loss(cfg, ddp, [rows[i] for i in b], ref_c[b], ref_r[b],
                                             pad_id)
            (loss / accum).backward()
        for key, v in [("loss/train", losses)] + list(stats.items()):
            sums[key] = sums.get(key, 0.0) + v.sum()  # summed on the device: no host sync
        n_tokens += sum(len(rows[i]["prompt_ids"]) * 2 + len(rows[i]["chosen_ids"])
                        + len(rows[i]["rejected_ids"]) for i in b)
    sums = dict(zip(sums, torch.stack(list(sums.values())).tolist()))  # one host sync
    run.check(torch.tensor(sums["loss/train"]))
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {**{k: run.mean(v) * run.world / len(batch) for k, v in sums.items()}, "lr": lr,
            "grad_norm": grad_norm.item(), "tokens_per_s": run.tokens_per_s(n_tokens),
            "tokens": n_tokens * run.world}  # through the policy, forward + backward


def main(cfg: DPOConfig, on_checkpoint=None):
    """Train; returns the log's rows. on_checkpoint(run folder): called after each checkpoint."""
    run = Run(cfg, distributed=True)  # (the lines on `run` are plumbing: plumbing/runs.py)
    check_config(cfg)
    if run.done:
        return run.history
    run.micro_batches(cfg.batch_size, cfg.micro_batch)  # the batch splits evenly, or an error
    init, device = gpt_folder(cfg.init), run.device
    tok = load_tokenizer(init)
    model = speed_up(GPT.from_pretrained(run.resume_from or init)).to(device).train()  # dropout 0
    rows = check_pairs(read_jsonl(cfg.pairs), cfg.pairs, model.config.block_size,
                       model.config.vocab_size)
    ref_path = gpt_folder(cfg.ref or cfg.init)
    # the same held-out prompts for every run on this pairs file (always keeps one to train on)
    train_idx, eval_idx = split_pairs(rows, cfg.eval_size, cfg.split_seed)
    check_held_out(rows, eval_idx, cfg.eval_size, cfg.split_seed, cfg.pairs)  # at most half
    run.say(f"{len(train_idx)} train / {len(eval_idx)} held out: {cfg.pairs}")
    run.start()  # the inputs are good: now the run folder
    # computed once by the first process (or found in the cache), then read by the others
    ref_c, ref_r = run.first_then_others(reference_logps, ref_path, cfg.pairs, rows, tok.eos_id,
                                         device, cfg.micro_batch)
    evaluate = lambda: evaluate_pairs(cfg, model, rows, eval_idx, ref_c, ref_r, tok.eos_id)
    steps = cfg.steps or max(1, len(train_idx) // cfg.batch_size)
    ddp = DDP(model) if run.world > 1 else model  # averages gradients over processes
    opt = optimizer(cfg, model, device)
    if not run.restore(opt) and eval_idx and run.main_process:
        run.log(evaluate())  # step 0: policy = reference (DPO's loss is log 2, accuracy 0)
    if eval_idx:  # early stopping on the held-out loss (--patience; rank 0 evaluates)
        run.stop_when_stalled("loss/eval", cfg.patience)

    for step in run.steps(steps, desc=f"{cfg.loss} {os.path.basename(cfg.out_dir)}"):
        batch = [train_idx[i] for i in stream_indices(len(train_idx), cfg.batch_size, step,
                                                      cfg.seed)]
        row = train_step(cfg, run, ddp, opt, rows, batch, ref_c, ref_r, tok.eos_id)
        if eval_idx and run.main_process and run.due(cfg.eval_every):
            row.update(evaluate())
        run.log(row, show=("loss/train", "rewards/accuracy"))
        if run.due(cfg.save_every):
            run.save(opt, model, tok)
            if on_checkpoint and run.main_process:  # the process that wrote it
                on_checkpoint(run.dir)
    return run.finish()


def check_config(cfg: DPOConfig):
    if cfg.loss not in LOSSES:
        raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, not {cfg.loss!r}")
    if cfg.optimizer not in ("rmsprop", "adamw"):
        raise ValueError(f"--optimizer must be rmsprop or adamw, not {cfg.optimizer!r}")
    if cfg.label_smoothing and cfg.loss != "dpo":
        raise ValueError(f"--label_smoothing is conservative DPO's: --loss dpo, not {cfg.loss}")
    if cfg.reference_free and cfg.loss not in ("dpo", "ipo", "hinge"):
        raise ValueError(f"--reference_free applies to dpo, ipo and hinge; --loss {cfg.loss} "
                         f"{'has no reference' if cfg.loss == 'simpo' else 'uses none'}")


if __name__ == "__main__":
    run_main(main, DPOConfig)
