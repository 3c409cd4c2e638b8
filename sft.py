"""Supervised fine-tuning: next-token loss on IMDb reviews (the paper's SFT model, App. C.1), on
the chosen completions of a pairs file (the Preferred-FT baseline; the paper's SFT for HH), or on
prompts and their reference completions (TL;DR's SFT set, written by hh_tldr/preferences.py).

Tiny CPU run (synthetic corpus, a small GPT from scratch, compact vocabulary):
    python sft.py --init scratch --dataset synthetic --out_dir runs/sft_tiny --steps 50 \
        --batch_size 32 --micro_batch 32 --lr 1e-3 --warmup 10 --n_layer 2 --n_head 2 --n_embd 64
Several GPUs (the same global batch, split across processes):
    torchrun --nproc_per_node 4 sft.py --init gpt2-large --out_dir runs/sft --micro_batch 8
"""

import os
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from data import (
    Tokenizer,
    check_held_out,
    check_pairs,
    collate,
    held_out_sample,
    is_token_ids,
    load_reviews,
    load_tokenizer,
    sft_sequences,
    split_pairs,
    stream_indices,
    synthetic_vocab,
)
from model import GPT, GPTConfig, gpt_folder, token_logprobs

from plumbing.flags import arg
from plumbing.runs import Run, run_main
from plumbing.speed import adamw, speed_up
from plumbing.utils import autocast, lr_at, read_jsonl
from synthetic import COMPACT_VOCABS, compact_vocab


@dataclass
class SFTConfig:
    out_dir: str = arg("runs/sft", "run folder")
    init: str = arg("gpt2-large",
                    'GPT-2 size, checkpoint folder, or "scratch" (a new model, below)')
    dataset: str = arg("stanfordnlp/imdb", 'hub name, local parquet folder, or "synthetic"')
    pairs: str | None = arg(None, "a pairs file: train on its chosen completions (Preferred-FT)")
    completions: str | None = arg(
        None, "a completions file (hh_tldr/preferences.py): prompt + reference")
    seed: int = arg(0, "data order, dropout", ">= 0")
    steps: int = arg(400, "optimizer steps (IMDb train: 25k reviews = 390 steps of 64)", "> 0")
    batch_size: int = arg(64, "sequences per optimizer step", "> 0")
    micro_batch: int = arg(
        8, "sequences per forward; batch_size / micro_batch accumulation steps", "> 0")
    max_len: int = arg(
        128, "tokens kept per review: the policy writes 48 after a <= 8-token prompt", "> 0")
    lr: float = arg(1e-5,
                    "AdamW peak learning rate (the paper does not state the SFT recipe)", "> 0")
    warmup: int = arg(40, "linear warm-up steps, then cosine decay to 10 %", ">= 0")
    weight_decay: float = arg(0.0, "AdamW weight decay", ">= 0")
    grad_clip: float = arg(1.0, "max global gradient norm", "> 0")
    dropout: float = arg(0.0, "dropout while fine-tuning (0: as in every later stage)", (0.0, 1.0))
    eval_every: int = arg(100, "held-out loss every N steps", "> 0")
    patience: int = arg(
        0, "stop once the held-out loss has not improved for N evaluations; 0: off", ">= 0")
    eval_size: int = arg(256, "held-out sequences (--pairs: pairs, whole prompts)", ">= 0")
    split_seed: int = arg(
        0, "--pairs: which prompts are held out; unlike seed, one for a whole sweep", ">= 0")
    save_every: int = arg(100, "checkpoint every N steps", "> 0")
    device: str = arg("auto", "cuda > mps > cpu", "device")
    n_layer: int = arg(2, "--init scratch only", "> 0")
    n_head: int = arg(2, "--init scratch only", "> 0")
    n_embd: int = arg(64, "--init scratch only", "> 0")
    block_size: int = arg(128, "--init scratch only: context length", "> 0")
    vocab: str = arg("auto", "--init scratch only: auto (synthetic: its compact one) | dialogue | "
                     "summary | gpt2")
    overwrite: bool = arg(False, "delete an existing run folder with another config")


def build_model(cfg: SFTConfig, resume_from: str | None) -> tuple[GPT, Tokenizer]:
    """The model to train: a resumed run's last checkpoint, --init's checkpoint, or a new GPT."""
    if resume_from or cfg.init != "scratch":
        folder = resume_from or gpt_folder(cfg.init)
        return speed_up(GPT.from_pretrained(folder, dropout=cfg.dropout)), load_tokenizer(folder)
    # from scratch: a synthetic corpus gets its compact vocabulary (see data.Tokenizer)
    if cfg.vocab not in ("auto", "dialogue", "summary", "gpt2"):
        raise ValueError(f"--vocab must be auto, dialogue, summary or gpt2, not {cfg.vocab!r}")
    if cfg.vocab in COMPACT_VOCABS:  # synthetic/dialogues.py's dialogues, summaries.py's posts
        tok = Tokenizer(compact_vocab(cfg.vocab))
    elif cfg.vocab == "auto" and cfg.dataset == "synthetic":
        tok = Tokenizer(synthetic_vocab())
    else:
        tok = Tokenizer()
    gcfg = GPTConfig(block_size=cfg.block_size, vocab_size=tok.vocab_size, n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                     eos_token_id=tok.eos_id)
    torch.manual_seed(cfg.seed)
    return speed_up(GPT(gcfg)), tok


def build_data(cfg: SFTConfig, tok: Tokenizer):
    """(prompts, completions) for training and for the held-out loss; the loss covers completions.
    Reviews: empty prompt, the review (+ EOS) as completion. Pairs: the chosen side of every pair,
    with about eval_size pairs' prompts held out (data.split_pairs; at most half the file,
    data.check_held_out). Completions: each prompt and its reference completion (TL;DR's SFT
    set), held out the same way."""
    if cfg.pairs and cfg.completions:
        raise ValueError("--pairs and --completions are two different training sets: pass one")
    if cfg.completions:
        rows = check_completions(read_jsonl(cfg.completions), cfg.completions)
        train_idx, held_idx = split_pairs(rows, cfg.eval_size, cfg.split_seed)
        check_held_out(rows, held_idx, cfg.eval_size, cfg.split_seed, cfg.completions)
        return tuple(([rows[i]["prompt_ids"] for i in idx],
                      [rows[i]["completion_ids"] for i in idx]) for idx in (train_idx, held_idx))
    if cfg.pairs is None:
        texts = load_reviews(cfg.dataset, "train")[0]
        test = load_reviews(cfg.dataset, "test")[0]
        test = [test[i] for i in held_out_sample(len(test), cfg.eval_size)]
        train, held = sft_sequences(texts, tok, cfg.max_len), sft_sequences(test, tok, cfg.max_len)
        return ([[]] * len(train), train), ([[]] * len(held), held)
    rows = check_pairs(read_jsonl(cfg.pairs), cfg.pairs)
    train_idx, held_idx = split_pairs(rows, cfg.eval_size, cfg.split_seed)
    check_held_out(rows, held_idx, cfg.eval_size, cfg.split_seed, cfg.pairs)

    # Preferred-FT is SFT on the chosen completions of the preference dataset (paper §6): one
    # sequence per pair, not per distinct completion. With 4 samples and all 6 pairs of a prompt,
    # the best sample is chosen in 3 pairs, the second in 2, the third in 1: weights 3:2:1.
    def chosen_side(idx):
        return [rows[i]["prompt_ids"] for i in idx], [rows[i]["chosen_ids"] for i in idx]
    return chosen_side(train_idx), chosen_side(held_idx)


def check_completions(rows: list[dict], path: str) -> list[dict]:
    """Rows of a completions file: prompt_ids and a non-empty completion_ids, lists of ids."""
    if not rows:
        raise ValueError(f"{path}: no such file" if not os.path.isfile(path) else
                         f"{path} holds no completions")
    for n, row in enumerate(rows, 1):
        for k in ("prompt_ids", "completion_ids"):
            if not is_token_ids(row.get(k) if isinstance(row, dict) else None):
                raise ValueError(f"{path}:{n}: {k} must be a list of non-negative integer ids")
        if not row["completion_ids"]:
            raise ValueError(f"{path}:{n}: empty completion")
    return rows


def lm_loss(model, input_ids, mask):
    """Mean next-token negative log-likelihood over the masked (completion) tokens."""
    lp = token_logprobs(model(input_ids), input_ids, mask, reduction="none")
    return -lp.sum() / mask[:, 1:].sum().clamp(min=1)


@torch.no_grad()
def eval_loss(model, prompts, completions, pad_id, micro_batch, device):
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(prompts), micro_batch):
        x, m = collate(prompts[i: i + micro_batch], completions[i: i + micro_batch], pad_id)
        x, m = x.to(device), m.to(device)
        with autocast(device):
            lp = token_logprobs(model(x), x, m, reduction="none")
        total, count = total - lp.sum().item(), count + int(m[:, 1:].sum())
    model.train()
    return total / max(count, 1)


def main(cfg: SFTConfig, on_checkpoint=None):
    """Train; returns the log's rows. on_checkpoint(run folder): called after each checkpoint."""
    run = Run(cfg, distributed=True)  # (the lines on `run` are plumbing: plumbing/runs.py)
    if run.done:
        return run.history
    accum = run.micro_batches(cfg.batch_size, cfg.micro_batch)  # per process, per step
    device = run.device
    model, tok = build_model(cfg, run.resume_from)
    (train_p, train_c), (held_p, held_c) = build_data(cfg, tok)
    if not train_p:
        raise ValueError("no training sequences")
    run.say(f"{len(train_p)} train / {len(held_p)} held out: "
            f"{cfg.pairs or cfg.completions or cfg.dataset + ' (held out: its test split)'}")
    run.start()  # the inputs are good: now the run folder
    model.to(device).train()
    evaluate = lambda: eval_loss(model, held_p, held_c, tok.eos_id, cfg.micro_batch, device)
    ddp = DDP(model) if run.world > 1 else model  # averages gradients over processes
    opt = adamw(model.parameters(), cfg.lr, device, weight_decay=cfg.weight_decay,
                betas=(0.9, 0.95))
    if not run.restore(opt) and held_p and run.main_process:
        run.log({"loss/eval": evaluate()})
    if held_p:  # early stopping on the held-out loss (--patience; rank 0 evaluates)
        run.stop_when_stalled("loss/eval", cfg.patience)

    for step in run.steps(cfg.steps, desc=f"sft {os.path.basename(cfg.out_dir)}"):
        lr = lr_at(step, cfg.lr, cfg.warmup, cfg.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = stream_indices(len(train_p), cfg.batch_size, step, cfg.seed)
        loss_sum, n_tokens = 0.0, 0
        for k in range(accum):
            j = k * run.world + run.rank  # this process's share of the global batch
            mb = idx[j * cfg.micro_batch: (j + 1) * cfg.micro_batch]
            x, m = collate([train_p[i] for i in mb], [train_c[i] for i in mb], tok.eos_id)
            x, m = x.to(device), m.to(device)
            with run.accumulate(ddp, k, accum):  # one gradient all-reduce per step
                with autocast(device):
                    loss = lm_loss(ddp, x, m) / accum
                loss.backward()
            loss_sum = loss_sum + loss.detach()
            n_tokens += sum(len(train_p[i]) + len(train_c[i]) for i in mb)
        run.check(loss_sum)  # one host sync per step, before the update
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        row = {"loss/train": run.mean(loss_sum.item()), "lr": lr, "grad_norm": grad_norm.item(),
               "tokens_per_s": run.tokens_per_s(n_tokens),
               "tokens": n_tokens * run.world}  # through the model, forward + backward
        if held_p and run.main_process and run.due(cfg.eval_every):
            row["loss/eval"] = evaluate()
        run.log(row, show=("loss/train",))
        if run.due(cfg.save_every):
            run.save(opt, model, tok)
            if on_checkpoint and run.main_process:  # the process that wrote it
                on_checkpoint(run.dir)
    return run.finish()


if __name__ == "__main__":
    run_main(main, SFTConfig)
