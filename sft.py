"""Supervised fine-tuning: next-token loss on IMDb reviews (the paper's SFT model, App. C.1), or on
the chosen completions of a pairs file (the Preferred-FT baseline).

Tiny CPU run (synthetic corpus, a small GPT from scratch, compact vocabulary):
    python sft.py --init scratch --dataset synthetic --out_dir runs/sft_tiny --steps 50 \
        --batch_size 32 --micro_batch 32 --lr 1e-3 --warmup 10 --n_layer 2 --n_head 2 --n_embd 64
Several GPUs (the same global batch, split across processes):
    torchrun --nproc_per_node 4 sft.py --init gpt2-large --out_dir runs/sft --micro_batch 8
"""

import contextlib
import os
import random
import time
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import (
    Tokenizer, check_pairs, collate, load_reviews, load_tokenizer, sft_sequences, split_pairs,
    stream_indices, synthetic_vocab,
)
from model import GPT, GPTConfig, token_logprobs
from utils import (
    adamw, autocast, check_finite, ddp_barrier, ddp_init, ddp_mean, get_device, is_done, load_state,
    log_row, lr_at, mark_done, open_run, read_jsonl, resolve_init, resume_log, rng_state,
    run_main, save_checkpoint, set_rng_state, set_seed, start_run, step_dir,
)


@dataclass
class SFTConfig:
    out_dir: str = "runs/sft"  # run folder
    init: str = "gpt2-large"  # GPT-2 size, checkpoint folder, or "scratch" (a new model, below)
    dataset: str = "stanfordnlp/imdb"  # hub name, local parquet folder, or "synthetic"
    pairs: str | None = None  # a pairs file: train on its chosen completions (Preferred-FT)
    seed: int = 0  # data order, dropout
    steps: int = 400  # optimizer steps (IMDb train: 25k reviews = 390 steps of 64)
    batch_size: int = 64  # sequences per optimizer step
    micro_batch: int = 8  # sequences per forward; batch_size / micro_batch accumulation steps
    max_len: int = 128  # tokens kept per review: the policy writes 48 after a <= 8-token prompt
    lr: float = 1e-5  # AdamW peak learning rate (the paper does not state the SFT recipe)
    warmup: int = 40  # linear warm-up steps, then cosine decay to 10 %
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max global gradient norm
    dropout: float = 0.0  # dropout while fine-tuning (0: as in every later stage)
    eval_every: int = 100  # held-out loss every N steps
    eval_size: int = 256  # held-out sequences
    save_every: int = 100  # checkpoint every N steps
    device: str = "auto"  # cuda > mps > cpu
    n_layer: int = 2  # --init scratch only
    n_head: int = 2  # --init scratch only
    n_embd: int = 64  # --init scratch only
    block_size: int = 128  # --init scratch only: context length
    overwrite: bool = False  # delete an existing run folder with another config


def build_model(cfg: SFTConfig) -> tuple[GPT, Tokenizer]:
    if cfg.init != "scratch":
        init = resolve_init(cfg.init)
        return GPT.from_pretrained(init, dropout=cfg.dropout), load_tokenizer(init)
    # from scratch: the synthetic corpus gets its compact vocabulary (see data.Tokenizer)
    tok = Tokenizer(synthetic_vocab()) if cfg.dataset == "synthetic" else Tokenizer()
    gcfg = GPTConfig(block_size=cfg.block_size, vocab_size=tok.vocab_size, n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                     eos_token_id=tok.eos_id)
    torch.manual_seed(cfg.seed)
    return GPT(gcfg), tok


def build_data(cfg: SFTConfig, tok: Tokenizer):
    """(prompts, completions) for training and for the held-out loss; the loss covers completions.
    Reviews: empty prompt, the review (+ EOS) as completion. Pairs: each distinct (prompt, chosen
    completion) once, with about eval_size pairs' prompts held out (data.split_pairs)."""
    if cfg.pairs is None:
        texts = load_reviews(cfg.dataset, "train")[0]
        test = load_reviews(cfg.dataset, "test")[0]  # sorted by label on the hub: sample it
        test = [test[i] for i in random.Random(0).sample(range(len(test)), min(cfg.eval_size,
                                                                                len(test)))]
        train, held = sft_sequences(texts, tok, cfg.max_len), sft_sequences(test, tok, cfg.max_len)
        return ([[]] * len(train), train), ([[]] * len(held), held)
    rows = check_pairs(read_jsonl(cfg.pairs), cfg.pairs)
    train_idx, held_idx = split_pairs(rows, cfg.eval_size)

    def distinct_chosen(idx):  # each (prompt, chosen completion) once
        seen = dict.fromkeys((tuple(rows[i]["prompt_ids"]), tuple(rows[i]["chosen_ids"]))
                             for i in idx)
        return [list(p) for p, _ in seen], [list(c) for _, c in seen]
    return distinct_chosen(train_idx), distinct_chosen(held_idx)


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


def main(cfg: SFTConfig):
    if cfg.lr <= 0:
        raise ValueError(f"learning rate must be positive, got {cfg.lr}")
    rank, world, device = ddp_init(get_device(cfg.device))
    if cfg.batch_size % (cfg.micro_batch * world):
        raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of micro_batch "
                         f"{cfg.micro_batch} x {world} processes")
    resuming = open_run(cfg)  # refuses another config; writes nothing yet
    if resuming and is_done(cfg.out_dir):
        return read_jsonl(os.path.join(cfg.out_dir, "log.jsonl"))
    set_seed(cfg.seed)
    state = load_state(cfg.out_dir) if resuming else None
    if state is None:
        model, tok = build_model(cfg)
    else:  # resume: weights from the last checkpoint, the rest from state.pt
        folder = step_dir(cfg.out_dir, state["step"])
        model, tok = GPT.from_pretrained(folder, dropout=cfg.dropout), load_tokenizer(folder)
    (train_p, train_c), (held_p, held_c) = build_data(cfg, tok)
    if not train_p:
        raise ValueError("no training sequences")
    if rank == 0:  # the inputs are good: now the run folder
        start_run(cfg)
    ddp_barrier(world)
    model.to(device).train()
    ddp = DDP(model) if world > 1 else model  # averages gradients over processes
    opt = adamw(model.parameters(), cfg.lr, device, weight_decay=cfg.weight_decay,
                betas=(0.9, 0.95))
    step = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step = state["step"]
    # the log keeps the rows its checkpoint covers: a killed run's later rows are logged again
    history = resume_log(cfg.out_dir, step if state else -1) if rank == 0 else []
    if state is None and held_p and rank == 0:
        loss = eval_loss(model, held_p, held_c, tok.eos_id, cfg.micro_batch, device)
        log_row(cfg.out_dir, {"step": 0, "loss/eval": loss}, history)

    accum = cfg.batch_size // (cfg.micro_batch * world)  # micro-batches per process per step
    pbar = tqdm(total=cfg.steps, initial=step, desc=f"sft {os.path.basename(cfg.out_dir)}",
                mininterval=1.0, disable=rank > 0)
    while step < cfg.steps:
        t0 = time.time()
        lr = lr_at(step, cfg.lr, cfg.warmup, cfg.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = stream_indices(len(train_p), cfg.batch_size, step, cfg.seed)
        loss_sum, n_tokens = 0.0, 0
        for k in range(accum):
            j = k * world + rank  # this process's share of the global batch
            mb = idx[j * cfg.micro_batch: (j + 1) * cfg.micro_batch]
            x, m = collate([train_p[i] for i in mb], [train_c[i] for i in mb], tok.eos_id)
            x, m = x.to(device), m.to(device)
            # gradients are averaged across processes only at the last micro-batch
            with ddp.no_sync() if world > 1 and k < accum - 1 else contextlib.nullcontext():
                with autocast(device):
                    loss = lm_loss(ddp, x, m) / accum
                loss.backward()
            loss_sum, n_tokens = loss_sum + loss.detach(), n_tokens + x.numel()
        check_finite(loss_sum, step + 1, cfg.out_dir)  # one host sync per step, before the update
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        loss_sum = ddp_mean(loss_sum.item(), world, device)
        row = {"step": step, "loss/train": loss_sum, "lr": lr, "grad_norm": grad_norm.item(),
               "tokens_per_s": n_tokens * world / (time.time() - t0)}
        if rank > 0:
            continue
        if held_p and (step % cfg.eval_every == 0 or step == cfg.steps):
            row["loss/eval"] = eval_loss(model, held_p, held_c, tok.eos_id, cfg.micro_batch,
                                         device)
        log_row(cfg.out_dir, row, history)
        pbar.update(1)
        pbar.set_postfix(loss=f"{loss_sum:.3f}", refresh=False)
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_checkpoint(cfg.out_dir, step,
                            lambda folder: (model.save_pretrained(folder), tok.save(folder)),
                            dict(optimizer=opt.state_dict(), rng=rng_state()))
    pbar.close()
    if rank == 0:
        mark_done(cfg.out_dir)
    ddp_barrier(world)
    return history


if __name__ == "__main__":
    run_main(main, SFTConfig)
