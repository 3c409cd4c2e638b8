"""Rewards: the one ground-truth entry point, and a GPT-2 reward model trained on pairs or labels.

load_ground_truth(spec) is what pairs.py, ppo.py and evaluate.py call: texts -> P(positive), from
the paper's RoBERTa classifier (roberta.py; siebert by default) or from the GPT-2 label classifier
trained here (the offline tiny preset's ground truth). The GPT-2 reward model below is also PPO's
learned RM.

    python reward.py score "A wonderful film." --ground_truth runs/gt_tiny
    python reward.py train --objective label --init runs/sft_tiny --dataset synthetic \
        --out_dir runs/gt_tiny --epochs 1 --batch_size 32 --micro_batch 32 --lr 1e-3
"""

import json
import os
import random
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data import (
    Tokenizer, check_pairs, collate, load_reviews, load_tokenizer, split_pairs, stream_indices,
)
from model import GPT, read_safetensors
from roberta import SIEBERT, load_roberta_scorer
from utils import (
    adamw, autocast, check_finite, get_device, is_done, load_state, log_row, lr_at, mark_done,
    open_run, read_jsonl, resolve_init, resume_log, rng_state, run_main, save_checkpoint,
    set_rng_state, set_seed, start_run, step_dir, write_folder,
)

# A GPT-2 backbone with a scalar head read at the last real token: r(x, y). Trained two ways:
#   objective "bt":    Bradley-Terry on pairs, -log sigmoid(r(x, y_w) - r(x, y_l)): PPO's learned RM
#                      (the paper: 3 epochs, the checkpoint with the best validation accuracy);
#   objective "label": cross-entropy on labelled reviews, P(positive) = sigmoid(r): a sentiment
#                      classifier that serves as the ground truth where siebert is not wanted
#                      (the offline tiny preset).
# Saved as the backbone in the HF GPT-2 layout plus reward_head.safetensors and reward_head.json.


def save_head(head: nn.Linear, path: str):
    from safetensors.torch import save_file

    save_file({"weight": head.weight.detach().cpu().contiguous(),
               "bias": head.bias.detach().cpu().contiguous()}, path)


def load_head(path: str) -> nn.Linear:
    sd = read_safetensors(path)
    head = nn.Linear(sd["weight"].shape[1], sd["weight"].shape[0])
    head.load_state_dict(sd)
    return head


class RewardModel(nn.Module):
    def __init__(self, gpt: GPT, head: nn.Linear | None = None):
        super().__init__()
        self.gpt = gpt
        if head is None:  # small: the backbone's features decide, not a random projection
            head = nn.Linear(gpt.config.n_embd, 1)
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
        self.head = head

    def forward(self, input_ids, lengths):
        """(B,) scalar rewards of right-padded input_ids (B, T), read at each row's last real
        token (index lengths - 1)."""
        h = self.gpt.hidden(input_ids)  # (B, T, C)
        last = h[torch.arange(len(h), device=h.device), lengths - 1]  # (B, C)
        return self.head(last).squeeze(-1).float()

    def score(self, seqs: list[list[int]], pad_id: int):
        """(B,) rewards of whole token sequences. Training and scoring both come through here, on
        the tokens of the text the ground truth reads: no EOS (Tokenizer.decode drops it), so the
        reward sits on the same token in both."""
        device = self.head.weight.device
        x, _ = collate([[]] * len(seqs), seqs, pad_id)
        lengths = torch.tensor([len(s) for s in seqs], device=device)
        with autocast(str(device)):
            return self(x.to(device), lengths)

    def save_pretrained(self, folder: str, kind: str, tok: Tokenizer):
        self.gpt.save_pretrained(folder)
        tok.save(folder)
        save_head(self.head, os.path.join(folder, "reward_head.safetensors"))
        with open(os.path.join(folder, "reward_head.json"), "w") as f:
            json.dump({"kind": kind}, f)


def reward_folder(path: str) -> str:
    """A reward-model checkpoint folder: `best/` of a run folder, else its last checkpoint."""
    if os.path.isfile(os.path.join(path, "best", "reward_head.json")):
        return os.path.join(path, "best")
    folder = resolve_init(path)
    if not os.path.isfile(os.path.join(folder, "reward_head.json")):
        raise FileNotFoundError(f"{path} holds no reward model (no reward_head.json)")
    return folder


class GPTScorer:
    """texts -> rewards with a GPT-2 reward model: the raw r for "bt", sigmoid(r) for "label"."""

    def __init__(self, folder: str, device: str = "cpu"):
        with open(os.path.join(folder, "reward_head.json")) as f:
            self.kind = json.load(f)["kind"]
        self.tok = load_tokenizer(folder)
        head = load_head(os.path.join(folder, "reward_head.safetensors"))
        self.model = RewardModel(GPT.from_pretrained(folder), head).to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 32, progress: bool | None = None):
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        T = self.model.gpt.config.block_size
        ids = [self.tok.encode(t)[:T] or [self.tok.eos_id] for t in texts]
        out = torch.empty(len(ids))
        starts = range(0, len(ids), batch_size)
        show = progress if progress is not None else len(starts) > 4
        for s in tqdm(starts, desc="reward model", disable=not show, mininterval=1.0):
            out[s: s + batch_size] = self.model.score(ids[s: s + batch_size], self.tok.eos_id).cpu()
        return out.sigmoid() if self.kind == "label" else out


def load_reward_model(path: str, device: str = "cpu") -> GPTScorer:
    """The learned reward model of a run folder (its best checkpoint) or checkpoint folder."""
    return GPTScorer(reward_folder(path), device)


def load_ground_truth(spec: str = SIEBERT, device: str = "cpu"):
    """The one ground-truth entry point (pairs.py, ppo.py, evaluate.py): a scorer texts ->
    P(positive). spec: a hub id or local folder of a RoBERTa sentiment classifier (default: the
    paper's siebert), or a run folder / checkpoint of the GPT-2 label classifier below."""
    if os.path.isdir(spec) and not os.path.isfile(os.path.join(spec, "vocab.json")):
        scorer = load_reward_model(spec, device)
        if scorer.kind != "label":
            raise ValueError(f"{spec} is a Bradley-Terry reward model, not a classifier: its "
                             f"scores are not P(positive)")
        return scorer
    return load_roberta_scorer(spec, device)


# ----------------------------------------------------------------------------- training


@dataclass
class RMConfig:
    out_dir: str = "runs/rm"  # run folder; the best checkpoint is kept in <out_dir>/best
    init: str = "runs/sft"  # backbone checkpoint (the SFT model)
    objective: str = "bt"  # bt: Bradley-Terry on pairs | label: cross-entropy on reviews
    pairs: str = "runs/pairs/pairs.jsonl"  # for bt
    dataset: str = "stanfordnlp/imdb"  # for label: train split to fit, test split to validate
    seed: int = 0  # data order
    epochs: int = 3  # passes over the training data (the paper's RM: 3)
    batch_size: int = 64  # pairs (bt) or reviews (label) per optimizer step
    micro_batch: int = 8  # per forward; accumulation makes up the batch
    lr: float = 1e-5  # AdamW learning rate, linear warm-up then cosine decay
    warmup: int = 50  # warm-up steps
    max_len: int = 128  # label: review tokens kept
    eval_size: int = 512  # held-out pairs (whole prompts) or test reviews
    eval_every: int = 100  # validation accuracy every N steps (and at the end)
    save_every: int = 100  # resumable checkpoint every N steps
    device: str = "auto"  # cuda > mps > cpu
    overwrite: bool = False  # delete an existing run folder with another config


def rm_data(cfg: RMConfig, tok: Tokenizer, gcfg):
    """Training and validation examples: pair rows for bt, (ids, label) for label."""
    if cfg.objective == "bt":
        rows = check_pairs(read_jsonl(cfg.pairs), cfg.pairs, gcfg.block_size, gcfg.vocab_size)
        train, held = split_pairs(rows, cfg.eval_size)
        return [rows[i] for i in train], [rows[i] for i in held]
    texts, labels = load_reviews(cfg.dataset, "train")
    test, test_labels = load_reviews(cfg.dataset, "test")
    pick = random.Random(0).sample(range(len(test)), min(cfg.eval_size, len(test)))
    n = min(cfg.max_len, gcfg.block_size)
    seq = lambda ts: [ids[:n] or [tok.eos_id] for ids in (tok.encode(t) for t in ts)]
    return (list(zip(seq(texts), labels)),
            list(zip(seq([test[i] for i in pick]), [test_labels[i] for i in pick])))


def rm_loss(cfg: RMConfig, model: RewardModel, examples, eos_id):
    """(mean loss, number correct) of a micro-batch."""
    if cfg.objective == "bt":  # chosen and rejected in one (2B, T) forward
        no_eos = lambda c: c[:-1] if len(c) > 1 and c[-1] == eos_id else c  # as text reads it
        seqs = ([r["prompt_ids"] + no_eos(r["chosen_ids"]) for r in examples]
                + [r["prompt_ids"] + no_eos(r["rejected_ids"]) for r in examples])
        r = model.score(seqs, eos_id)
        margin = r[: len(examples)] - r[len(examples):]
        return -F.logsigmoid(margin).mean(), (margin > 0).sum().item()
    y = torch.tensor([float(lab) for _, lab in examples], device=model.head.weight.device)
    r = model.score([ids for ids, _ in examples], eos_id)
    return F.binary_cross_entropy_with_logits(r, y), ((r > 0).float() == y).sum().item()


@torch.no_grad()
def rm_accuracy(cfg, model, examples, pad_id) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(examples), cfg.micro_batch):
        b = examples[i: i + cfg.micro_batch]
        lb, cb = rm_loss(cfg, model, b, pad_id)
        loss, correct = loss + lb.item() * len(b), correct + cb
    model.train()
    return loss / len(examples), correct / len(examples)


def train(cfg: RMConfig):
    """Fit the reward model; keep the checkpoint with the best validation accuracy in best/."""
    if cfg.objective not in ("bt", "label"):
        raise ValueError(f"--objective must be bt or label, not {cfg.objective!r}")
    if cfg.lr <= 0:
        raise ValueError(f"learning rate must be positive, got {cfg.lr}")
    if cfg.batch_size % cfg.micro_batch:
        raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of micro_batch "
                         f"{cfg.micro_batch}")
    resuming = open_run(cfg)  # refuses another config; writes nothing yet
    if resuming and is_done(cfg.out_dir):
        return read_jsonl(os.path.join(cfg.out_dir, "log.jsonl"))
    device = get_device(cfg.device)
    set_seed(cfg.seed)
    state = load_state(cfg.out_dir) if resuming else None
    folder = step_dir(cfg.out_dir, state["step"]) if state else resolve_init(cfg.init)
    tok = load_tokenizer(folder)
    head = load_head(os.path.join(folder, "reward_head.safetensors")) if state else None
    model = RewardModel(GPT.from_pretrained(folder), head).to(device).train()
    train_ex, held_ex = rm_data(cfg, tok, model.gpt.config)
    if not held_ex:
        raise ValueError("no validation examples: raise --eval_size or add data")
    start_run(cfg)  # the inputs are good: now the run folder
    steps = max(1, cfg.epochs * len(train_ex) // cfg.batch_size)
    opt = adamw(model.parameters(), cfg.lr, device, weight_decay=0.0)
    step, best = 0, -1.0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step, best = state["step"], state["best"]
    # the log keeps the rows its checkpoint covers: a killed run's later rows are logged again
    history = resume_log(cfg.out_dir, step if state else -1)
    accum = cfg.batch_size // cfg.micro_batch
    pbar = tqdm(total=steps, initial=step, desc=f"rm {cfg.objective}", mininterval=1.0)
    while step < steps:
        t0 = time.time()
        lr = lr_at(step, cfg.lr, cfg.warmup, steps)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = stream_indices(len(train_ex), cfg.batch_size, step, cfg.seed)
        loss_sum, correct = 0.0, 0
        for k in range(accum):
            b = [train_ex[i] for i in idx[k * cfg.micro_batch: (k + 1) * cfg.micro_batch]]
            loss, c = rm_loss(cfg, model, b, tok.eos_id)
            check_finite(loss, step + 1, cfg.out_dir)
            (loss / accum).backward()
            loss_sum, correct = loss_sum + loss.item() / accum, correct + c
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        row = {"step": step, "loss/train": loss_sum, "rm/accuracy": correct / cfg.batch_size,
               "lr": lr, "grad_norm": grad_norm.item(), "time/step": time.time() - t0}
        if step % cfg.eval_every == 0 or step == steps:
            row["loss/eval"], row["eval/rm/accuracy"] = rm_accuracy(cfg, model, held_ex,
                                                                    tok.eos_id)
            if row["eval/rm/accuracy"] > best:  # the paper keeps the best validation accuracy
                best = row["eval/rm/accuracy"]
                write_folder(os.path.join(cfg.out_dir, "best"),
                             lambda f: model.save_pretrained(f, cfg.objective, tok))
        log_row(cfg.out_dir, row, history)
        pbar.update(1)
        pbar.set_postfix(loss=f"{loss_sum:.3f}", acc=f"{row['rm/accuracy']:.2f}",
                         refresh=False)
        if step % cfg.save_every == 0 or step == steps:
            save_checkpoint(cfg.out_dir, step, lambda f: model.save_pretrained(f, cfg.objective,
                                                                               tok),
                            dict(optimizer=opt.state_dict(), rng=rng_state(), best=best))
    pbar.close()
    mark_done(cfg.out_dir)
    return history


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "score":
        import argparse

        ap = argparse.ArgumentParser(description="Print P(positive) of each text.")
        ap.add_argument("texts", nargs="+")
        ap.add_argument("--ground_truth", default=SIEBERT)
        ap.add_argument("--device", default="cpu")
        args = ap.parse_args(sys.argv[2:])
        try:
            scores = load_ground_truth(args.ground_truth, args.device)(args.texts)
        except (ValueError, OSError) as e:
            sys.exit(f"error: {e}")
        for text, p in zip(args.texts, scores.tolist()):
            print(f"{p:.4f}\t{text}")
    elif len(sys.argv) > 1 and sys.argv[1] == "train":
        run_main(train, RMConfig, sys.argv[2:])
    else:
        sys.exit("usage: python reward.py score TEXT... [--ground_truth SPEC]\n"
                 "       python reward.py train [--objective bt|label] ... (--help for flags)")
