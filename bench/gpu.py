"""GPU throughput of the paper-scale steps, random weights (nothing to download): gpt2-large with
bf16 autocast and fused AdamW (torch.compile optional). Measures an SFT step, a DPO step, PPO
rollout sampling and an update, the RoBERTa-large ground truth scoring; reports tokens/s, MFU
against the GPU's bf16 peak and peak memory; then estimates the `paper` preset's wall time.

    python bench/gpu.py                         # on a CUDA machine
    python bench/gpu.py --size tiny --device cpu --reps 1   # a smoke run anywhere (the test)
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import SIZES  # noqa: E402

from dpo import concatenated_logps, preference_loss  # noqa: E402
from model import GPT, GPTConfig, token_logprobs  # noqa: E402
from roberta import RobertaClassifier, RobertaConfig  # noqa: E402

from plumbing.speed import adamw, speed_up  # noqa: E402
from plumbing.utils import autocast  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s, datasheets


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, reps, warmup=1):
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def peak_mem_gb(dev):
    return torch.cuda.max_memory_allocated() / 2**30 if dev.startswith("cuda") else None


def bench_sft(train_model, model, cfg, args, dev, N, mfu):
    """Forward + backward + fused AdamW on (sft_batch, seq) tokens. The optimizer is local, so
    its moments are freed before the next measurement."""
    opt = adamw(model.parameters(), 1e-5, dev)
    x = torch.randint(0, cfg.vocab_size, (args.sft_batch, args.seq), device=dev)
    mask = torch.ones_like(x, dtype=torch.bool)

    def step():
        with autocast(dev):
            lp = token_logprobs(train_model(x), x, mask, reduction="none")
        (-lp.mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = timed(step, dev, args.reps)
    tok = x.numel() / t
    flops = (6 * N + 12 * cfg.n_layer * args.seq * cfg.n_embd) * tok
    return dict(s_per_step=t, tokens_per_s=tok, mfu=mfu(flops), peak_mem_gb=peak_mem_gb(dev))


def bench_dpo(train_model, model, cfg, args, dev, N, mfu):
    """One forward over the concatenated (2 micro_batch, pair_len) batch + RMSprop, the reference
    log-probs read from a cache (constants here)."""
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-6)
    g = torch.Generator().manual_seed(0)
    rnd = lambda n: torch.randint(0, cfg.vocab_size - 1, (n,), generator=g).tolist()
    rows = [dict(prompt_ids=rnd(8), chosen_ids=rnd(args.pair_len - 8),
                 rejected_ids=rnd(args.pair_len - 8)) for _ in range(args.micro_batch)]
    ref_c = torch.full((args.micro_batch,), -100.0, device=dev)

    def step():
        pc, pr = concatenated_logps(train_model, rows, 50256)
        preference_loss(pc, pr, ref_c, ref_c, 0.1)[0].mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = timed(step, dev, args.reps)
    tok = 2 * args.micro_batch * args.pair_len / t
    flops = (6 * N + 12 * cfg.n_layer * args.pair_len * cfg.n_embd) * tok
    return dict(s_per_step=t, tokens_per_s=tok, pairs_per_s=args.micro_batch / t,
                mfu=mfu(flops), peak_mem_gb=peak_mem_gb(dev))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="gpt2-large", choices=list(SIZES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--micro_batch", type=int, default=16, help="pairs per DPO forward")
    ap.add_argument("--sft_batch", type=int, default=16, help="sequences per SFT forward")
    ap.add_argument("--seq", type=int, default=128, help="SFT sequence length")
    ap.add_argument("--pair_len", type=int, default=56, help="prompt + completion tokens")
    ap.add_argument("--gen_batch", type=int, default=128)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--compile", action="store_true", help="torch.compile the training model")
    ap.add_argument("--roberta", default="large", choices=["large", "tiny"])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--estimate", default="paper", help="preset to estimate ('' for none)")
    args = ap.parse_args(argv)
    dev = args.device
    torch.manual_seed(0)
    if dev.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))
    else:
        name, peak = "cpu", float("nan")
    L, H, C = SIZES[args.size]
    cfg = GPTConfig(n_layer=L, n_head=H, n_embd=C)
    with torch.device(dev):
        model = speed_up(GPT(cfg))
    N = model.num_params()  # tied output layer counted, positions not
    res = dict(device=name, size=args.size, params=N, peak_bf16=peak)

    def mfu(flops_per_s):
        return flops_per_s / peak if peak == peak else float("nan")

    train_model = torch.compile(model) if args.compile else model
    res["sft"] = bench_sft(train_model, model, cfg, args, dev, N, mfu)
    res["dpo"] = bench_dpo(train_model, model, cfg, args, dev, N, mfu)
    g = torch.Generator().manual_seed(0)
    rnd = lambda n: torch.randint(0, cfg.vocab_size - 1, (n,), generator=g).tolist()

    # ---- forward only (reference log-probs, PPO's old/ref passes, evaluation's two passes)
    xf = torch.randint(0, cfg.vocab_size, (2 * args.micro_batch, args.pair_len), device=dev)

    @torch.no_grad()
    def fwd():
        with autocast(dev):
            model(xf)

    t = timed(fwd, dev, args.reps)
    res["forward"] = dict(tokens_per_s=xf.numel() / t, mfu=mfu(2 * N * xf.numel() / t))

    # ---- sampling: gen_batch prompts of 2..8 tokens, `new` tokens with the KV cache
    model.eval()
    prompts = [rnd(2 + i % 7) for i in range(args.gen_batch)]

    def sample():
        with autocast(dev):
            model.generate(prompts, args.new, temperature=1.0, eos_id=-1,
                           generator=torch.Generator(device=dev).manual_seed(0))

    t = timed(sample, dev, max(1, args.reps // 2))
    res["sample"] = dict(s_per_batch=t, sequences_per_s=args.gen_batch / t,
                         tokens_per_s=args.gen_batch * args.new / t)
    model.train()

    # ---- the ground truth: RoBERTa-large (siebert's shape) scoring prefix + completion texts
    rcfg = RobertaConfig() if args.roberta == "large" else RobertaConfig(
        n_layer=2, n_head=2, n_embd=64, n_inner=256)
    with torch.device(dev):
        rob = RobertaClassifier(rcfg).eval()
    ids = torch.randint(3, 50000, (64, 64), device=dev)

    @torch.no_grad()
    def score():
        with autocast(dev):
            rob(ids)

    t = timed(score, dev, args.reps)
    res["roberta"] = dict(texts_per_s=64 / t)
    if dev.startswith("cuda"):
        res["peak_mem_gb_total"] = torch.cuda.max_memory_allocated() / 2**30
    if args.estimate:
        res[f"{args.estimate}_preset_estimate_h"] = estimate_hours(res, args.estimate)
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


def estimate_hours(r: dict, preset: str) -> dict:
    """Wall-clock hours of `python frontier.py --preset <preset>` from measured throughputs, stage
    by stage, with the counts of frontier.PRESETS (the scripts' defaults where a preset is
    silent). Ignores start-up, checkpoint writes and the host side: a lower bound in spirit."""
    from dpo import DPOConfig
    from frontier import PRESETS
    from ppo import PPOConfig
    from reward import RMConfig
    from sft import SFTConfig

    p = PRESETS[preset]
    sft, dpo = SFTConfig(**p.sft), DPOConfig(**p.dpo)
    pft, ppo, rm = SFTConfig(**p.pft), PPOConfig(**p.ppo), RMConfig(**p.rm)
    pair_len, samples = 56, p.pairs.get("n_prefixes", 25000) * 4
    pairs = samples // 4 * 6
    gen = lambda n: n / r["sample"]["sequences_per_s"]  # n completions of 48 tokens
    fwd = lambda n: n * pair_len / r["forward"]["tokens_per_s"]  # n sequences, no grad
    score = lambda n: n / r["roberta"]["texts_per_s"]
    h = {}
    h["sft"] = sft.steps * sft.batch_size * sft.max_len / r["sft"]["tokens_per_s"]
    h["pairs"] = gen(samples) + score(samples)
    h["reward model"] = rm.epochs * pairs / r["dpo"]["pairs_per_s"]
    dpo_steps = dpo.steps or pairs // dpo.batch_size
    runs = len(p.betas) + len(p.alphas)
    h["dpo + unlikelihood"] = (runs * dpo_steps * dpo.batch_size / r["dpo"]["pairs_per_s"]
                               + fwd(2 * pairs))  # + the reference log-probs, once
    h["preferred-ft"] = (len(p.pft_seeds) * pft.steps * pft.batch_size * pair_len
                         / r["sft"]["tokens_per_s"])
    per_iter = (gen(ppo.batch_size) + 2 * fwd(ppo.batch_size) + score(ppo.batch_size)
                + ppo.ppo_epochs * ppo.batch_size * pair_len / r["sft"]["tokens_per_s"])
    h["ppo + ppo-gt"] = 2 * len(p.target_kls) * ppo.steps * per_iter
    n_eval = p.eval.get("n_prefixes", 512)
    ckpts = (runs * (dpo_steps // dpo.save_every) + len(p.pft_seeds) * (pft.steps // pft.save_every)
             + 2 * len(p.target_kls) * (ppo.steps // ppo.save_every) + 1)
    h["evaluation"] = ckpts * (gen(n_eval) + 2 * fwd(n_eval) + score(n_eval))
    h = {k: round(v / 3600, 2) for k, v in h.items()}
    h["total"] = round(sum(h.values()), 2)
    return h


if __name__ == "__main__":
    main()
