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
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from data import (
    Tokenizer,
    check_held_out,
    check_pairs,
    collate,
    held_out_sample,
    load_reviews,
    load_tokenizer,
    split_pairs,
    stream_indices,
)
from model import GPT, gpt_folder
from roberta import SIEBERT, load_roberta_scorer

from plumbing.flags import arg
from plumbing.runs import Run, first_paragraph, run_main
from plumbing.speed import adamw, speed_up
from plumbing.utils import (
    autocast,
    load_head,
    lr_at,
    read_jsonl,
    resolve_checkpoint,
    save_head,
    write_folder,
)

# A GPT-2 backbone with a scalar head read at the last real token: r(x, y). Trained two ways:
#   objective "bt":    Bradley-Terry on pairs, -log sigmoid(r(x, y_w) - r(x, y_l)): PPO's learned RM
#                      (the paper: 3 epochs, the checkpoint with the best validation accuracy);
#   objective "label": cross-entropy on labelled reviews, P(positive) = sigmoid(r): a sentiment
#                      classifier that serves as the ground truth where siebert is not wanted
#                      (the offline tiny preset).
# Saved as the backbone in the HF GPT-2 layout plus reward_head.safetensors and reward_head.json.


def rm_tokens(ids: list[int], eos_id: int, max_len: int) -> list[int]:
    """The tokens the reward model reads of a sequence: those of the text the ground truth reads,
    i.e. without a final EOS (Tokenizer.decode drops it), cut to max_len; an empty sequence reads
    as one EOS. Training (pairs and labelled reviews) and scoring texts all come through here, so
    the reward sits on the same token in both."""
    if ids and ids[-1] == eos_id:
        ids = ids[:-1]
    return ids[:max_len] or [eos_id]


def rm_sequence(prompt_ids, response_ids, eos_id, max_len):
    """What the reward model reads of prompt + response: rm_tokens' tokens (no final EOS), keeping
    the last max_len so that a long prompt never cuts the response off."""
    seq = rm_tokens(list(prompt_ids) + list(response_ids), eos_id, len(prompt_ids) +
                    len(response_ids) + 1)
    return seq[-max_len:]


class RewardModel(nn.Module):
    def __init__(self, gpt: GPT, kind: str, head: nn.Linear | None = None):
        super().__init__()
        self.gpt, self.kind = gpt, kind
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
        """(B,) rewards of whole token sequences (from rm_tokens)."""
        device = self.head.weight.device
        x, _ = collate([[]] * len(seqs), seqs, pad_id)
        lengths = torch.tensor([len(s) for s in seqs], device=device)
        with autocast(str(device)):
            return self(x.to(device), lengths)

    def save_pretrained(self, folder: str):
        self.gpt.save_pretrained(folder)
        save_head(self.head, os.path.join(folder, "reward_head.safetensors"))
        with open(os.path.join(folder, "reward_head.json"), "w") as f:
            json.dump({"kind": self.kind}, f)

    @classmethod
    def from_pretrained(cls, path: str) -> "RewardModel":
        """A reward model from a checkpoint folder, or a run folder (its best/ checkpoint)."""
        folder = reward_folder(path)
        with open(os.path.join(folder, "reward_head.json")) as f:
            kind = json.load(f)["kind"]
        return cls(speed_up(GPT.from_pretrained(folder)), kind,
                   load_head(os.path.join(folder, "reward_head.safetensors")))


def reward_folder(path: str) -> str:
    """A reward-model checkpoint folder: `best/` of a run folder, else its last checkpoint."""
    return resolve_checkpoint(path, ("reward_head.json", "config.json"))


class GPTScorer:
    """Rewards with a GPT-2 reward model: the raw r for "bt", sigmoid(r) for "label".

    Two entry points. scorer(texts): the ground-truth interface (pairs.py, evaluate.py, PPO-GT),
    texts in, as siebert reads them. scorer.score_ids(seqs): token ids in, as the policy sampled
    them; PPO's learned RM and best-of-N use it, because the RM was trained on the pairs' ids
    and decoding then re-encoding does not always give the ids back."""

    def __init__(self, path: str, device: str = "cpu"):
        self.model = RewardModel.from_pretrained(path).to(device).eval()
        self.kind, self.tok = self.model.kind, load_tokenizer(reward_folder(path))

    def to(self, device: str) -> "GPTScorer":
        """Move the model (evaluate.py keeps a ground truth on the host between evaluations)."""
        self.model.to(device)
        return self

    def check_tokenizer(self, tok: Tokenizer, what: str):
        """score_ids reads ids of `tok` as its own: refuse a policy of another vocabulary."""
        if tok.vocab != self.tok.vocab:
            raise ValueError(f"the reward model and {what} have different vocabularies (a "
                             f"reward model trained from another checkpoint?): it cannot read "
                             f"their token ids")

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 32, progress: bool | None = None):
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        return self.score_ids([self.tok.encode(t) for t in texts], batch_size, progress)

    @torch.no_grad()
    def score_ids(self, seqs: list[list[int]], batch_size: int = 32,
                  progress: bool | None = None):
        """(N,) rewards of token sequences (prompt + completion ids, a final EOS or not), read
        through rm_tokens as in training."""
        T = self.model.gpt.config.block_size
        ids = [rm_tokens(list(s), self.tok.eos_id, T) for s in seqs]
        out = torch.empty(len(ids))
        starts = range(0, len(ids), batch_size)
        show = progress if progress is not None else len(starts) > 4
        for s in tqdm(starts, desc="reward model", disable=not show, mininterval=1.0):
            out[s: s + batch_size] = self.model.score(ids[s: s + batch_size], self.tok.eos_id).cpu()
        return out.sigmoid() if self.kind == "label" else out


def load_reward_model(path: str, device: str = "cpu") -> GPTScorer:
    """The learned reward model of a run folder (its best checkpoint) or checkpoint folder; it
    scores a policy's token ids with score_ids (after check_tokenizer), texts when called."""
    return GPTScorer(path, device)


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
    out_dir: str = arg("runs/rm", "run folder; the best checkpoint is kept in <out_dir>/best")
    init: str = arg("runs/sft", "backbone checkpoint (the SFT model)")
    objective: str = arg("bt", "bt: Bradley-Terry on pairs | label: cross-entropy on reviews")
    pairs: str = arg("runs/pairs/pairs.jsonl", "for bt")
    dataset: str = arg("stanfordnlp/imdb", "for label: train split to fit, test split to validate")
    seed: int = arg(0, "data order", ">= 0")
    epochs: int = arg(3, "passes over the training data (the paper's RM: 3)", "> 0")
    batch_size: int = arg(64, "pairs (bt) or reviews (label) per optimizer step", "> 0")
    micro_batch: int = arg(8, "per forward; accumulation makes up the batch", "> 0")
    lr: float = arg(1e-5, "AdamW learning rate, linear warm-up then cosine decay", "> 0")
    warmup: int = arg(50, "warm-up steps", ">= 0")
    max_len: int = arg(128, "label: review tokens kept", "> 0")
    eval_size: int = arg(512, "held-out pairs (whole prompts) or test reviews", ">= 0")
    split_seed: int = arg(
        0, "bt: which prompts are held out (data.split_pairs); unlike seed, fixed", ">= 0")
    eval_every: int = arg(100, "validation accuracy every N steps (and at the end)", "> 0")
    patience: int = arg(
        0, "stop once validation accuracy has not improved for N evaluations; 0: off", ">= 0")
    save_every: int = arg(100, "resumable checkpoint every N steps", "> 0")
    device: str = arg("auto", "cuda > mps > cpu", "device")
    overwrite: bool = arg(False, "delete an existing run folder with another config")


def rm_data(cfg: RMConfig, tok: Tokenizer, gcfg):
    """Training and validation examples: pair rows for bt, (ids, label) for label."""
    if cfg.objective == "bt":
        rows = check_pairs(read_jsonl(cfg.pairs), cfg.pairs, gcfg.block_size, gcfg.vocab_size)
        train, held = split_pairs(rows, cfg.eval_size, cfg.split_seed)
        check_held_out(rows, held, cfg.eval_size, cfg.split_seed, cfg.pairs)  # at most half
        return [rows[i] for i in train], [rows[i] for i in held]
    texts, labels = load_reviews(cfg.dataset, "train")
    test, test_labels = load_reviews(cfg.dataset, "test")
    pick = held_out_sample(len(test), cfg.eval_size)
    n = min(cfg.max_len, gcfg.block_size)
    seq = lambda ts: [rm_tokens(tok.encode(t), tok.eos_id, n) for t in ts]
    return (list(zip(seq(texts), labels)),
            list(zip(seq([test[i] for i in pick]), [test_labels[i] for i in pick])))


def rm_loss(cfg: RMConfig, model: RewardModel, examples, eos_id):
    """(mean loss, number correct) of a micro-batch."""
    if cfg.objective == "bt":  # chosen and rejected in one (2B, T) forward
        T = model.gpt.config.block_size
        seqs = [rm_tokens(r["prompt_ids"] + r[side], eos_id, T)
                for side in ("chosen_ids", "rejected_ids") for r in examples]
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
    run = Run(cfg)  # (the lines on `run` are plumbing: plumbing/runs.py)
    check_config(cfg)
    if run.done:
        return run.history
    folder = run.resume_from or gpt_folder(cfg.init)
    tok = load_tokenizer(folder)
    if run.resume_from:
        model = RewardModel.from_pretrained(folder)
    else:
        model = RewardModel(speed_up(GPT.from_pretrained(folder)), cfg.objective)
    model.to(run.device).train()
    train_ex, held_ex = rm_data(cfg, tok, model.gpt.config)
    if not held_ex:
        raise ValueError("no validation examples: raise --eval_size or add data")
    run.say(f"{len(train_ex)} train / {len(held_ex)} held out: " + (
        cfg.pairs if cfg.objective == "bt" else f"{cfg.dataset} (held out: its test split)"))
    run.start()  # the inputs are good: now the run folder
    steps = max(1, cfg.epochs * len(train_ex) // cfg.batch_size)
    opt = adamw(model.parameters(), cfg.lr, run.device, weight_decay=0.0)
    best = run.restore(opt).get("best", -1.0)
    accum = cfg.batch_size // cfg.micro_batch
    run.stop_when_stalled("eval/rm/accuracy", cfg.patience, mode="max")  # early stopping
    for step in run.steps(steps, desc=f"rm {cfg.objective}"):
        lr = lr_at(step, cfg.lr, cfg.warmup, steps)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = stream_indices(len(train_ex), cfg.batch_size, step, cfg.seed)
        loss_sum, correct, n_tokens = 0.0, 0, 0
        for k in range(accum):
            b = [train_ex[i] for i in idx[k * cfg.micro_batch: (k + 1) * cfg.micro_batch]]
            loss, c = rm_loss(cfg, model, b, tok.eos_id)
            run.check(loss)
            (loss / accum).backward()
            loss_sum, correct = loss_sum + loss.item() / accum, correct + c
            n_tokens += sum(example_tokens(cfg, e) for e in b)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        row = {"loss/train": loss_sum, "rm/accuracy": correct / cfg.batch_size, "lr": lr,
               "grad_norm": grad_norm.item(), "tokens_per_s": run.tokens_per_s(n_tokens),
               "tokens": n_tokens}  # forward + backward
        if run.due(cfg.eval_every):
            row["loss/eval"], row["eval/rm/accuracy"] = rm_accuracy(cfg, model, held_ex,
                                                                    tok.eos_id)
            if row["eval/rm/accuracy"] > best:  # the paper keeps the best validation accuracy
                best = row["eval/rm/accuracy"]
                write_folder(os.path.join(cfg.out_dir, "best"),
                             lambda f: (model.save_pretrained(f), tok.save(f)))
        run.log(row, show=("loss/train", "rm/accuracy"))
        if run.due(cfg.save_every):
            run.save(opt, model, tok, best=best)
    return run.finish()


def example_tokens(cfg: RMConfig, example) -> int:
    """Tokens of one training example: both sides of a pair, or a review."""
    if cfg.objective == "bt":
        return 2 * len(example["prompt_ids"]) + len(example["chosen_ids"]) + len(
            example["rejected_ids"])
    return len(example[0])


def check_config(cfg: RMConfig):
    if cfg.objective not in ("bt", "label"):
        raise ValueError(f"--objective must be bt or label, not {cfg.objective!r}")
    if cfg.batch_size % cfg.micro_batch:
        raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of micro_batch "
                         f"{cfg.micro_batch}")


def unknown_words(tok, text: str) -> list[str]:
    """The words of `text` that a compact-vocabulary tokenizer maps to its unknown id (none for
    GPT-2's full BPE, or a RoBERTa classifier)."""
    if tok is None or getattr(tok, "unk_id", None) is None:
        return []
    return [w for w in text.split() if tok.unk_id in tok.encode(" " + w)]


USAGE = """usage: python reward.py score TEXT... [--ground_truth SPEC] [--device DEVICE]
       python reward.py train [--objective bt|label] ...   (reward.py train --help: its flags)"""


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "score":
        import argparse

        ap = argparse.ArgumentParser(prog="reward.py score",
                                     description="Print the ground-truth P(positive) of each text.")
        ap.add_argument("texts", nargs="+", help="the texts to score")
        ap.add_argument("--ground_truth", default=SIEBERT,
                        help="a RoBERTa sentiment classifier (hub id or folder), or a run folder "
                             "of reward.py's label classifier (default: %(default)s)")
        ap.add_argument("--device", default="cpu", help="cpu, cuda, mps (default: %(default)s)")
        args = ap.parse_args(sys.argv[2:])
        try:
            scorer = load_ground_truth(args.ground_truth, args.device)
            scores = scorer(args.texts)
        except (ValueError, OSError) as e:
            sys.exit(f"error: {e}")
        for text in args.texts:  # a compact vocabulary (tiny preset) knows only its corpus' words
            unknown = unknown_words(getattr(scorer, "tok", None), text)
            if unknown:
                print(f"warning: {len(unknown)} word(s) lie outside the classifier's vocabulary "
                      f"and are scored as unknown tokens: {', '.join(unknown[:8])}",
                      file=sys.stderr)
        for text, p in zip(args.texts, scores.tolist()):
            print(f"{p:.4f}\t{text}")
    elif len(sys.argv) > 1 and sys.argv[1] == "train":
        run_main(train, RMConfig, sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(first_paragraph(__doc__) + "\n\n" + USAGE)
    else:
        sys.exit(USAGE)
