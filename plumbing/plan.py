"""What a frontier.py sweep costs before it runs (`python frontier.py --preset P --plan`): every
step's optimizer steps, examples and checkpoints, the bytes of a checkpoint, the sweep folder's
peak disk with and without pruning, and an estimate of the time. Nothing is loaded or run.

Counts follow each script's own arithmetic. Sizes come from the model's config, built on the meta
device (shapes, no weights). Pairs are taken as n_prefixes x 6 (pairs.py drops exact ties, so a
real file may hold a few fewer, and the RM and a one-epoch DPO a few fewer steps). Times scale
measured throughputs: the tiny preset's stage times on 2 CPU cores, and docs/benchmarks.md's GPU
benchmarks for GPT-2 sizes.
"""

import json
import math
import os

from dpo import DPOConfig
from pairs import PairsConfig
from ppo import PPOConfig
from reward import RMConfig
from sft import SFTConfig

from online.dpo import OnlineDPOConfig
from plumbing.presets import PRESETS, keeps_last, n_jobs
from plumbing.prune import saved_steps
from theory.optimum import OptimumConfig

GPT2_SIZES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
              "gpt2-xl": (48, 25, 1600)}  # (n_layer, n_head, n_embd)
TRAIN_REVIEWS = {"synthetic": 20000}  # data.load_reviews' train split; IMDb's: 25,000
PAIR_LEN = 56  # tokens of a prompt + completion (at most 8 + 48)
PAIR_ROW = {"synthetic": 830}  # bytes of a pairs.jsonl row, measured on tiny; IMDb's ~1.3 kB
LOG_ROW = 300  # bytes of a log.jsonl row, roughly
STATE_EXTRA = 32_000  # bytes of state.pt besides the optimizer's tensors: RNG states, counters
# Seconds and units of work of each stage of the tiny preset on a 2-core CPU, measured in the run of
# `--seeds 3` (docs/results.md: 36 min) from seed 0's stages; the CPU estimate is these rates times
# a step's units. A sweep run's stage time there includes evaluating its checkpoints as they were
# written: that share (0.81 s per checkpoint, the evaluate rate below) is taken out. The evaluate
# rate is the previous version's measurement (7.1 min run), where evaluation was a stage of its own.
CPU_RUN = {
    "sft": (12, 300 * 32), "ground truth": (15, 625 * 32), "pairs": (7, 1024 * 4),
    "reward model": (17, 400 * 32), "dpo": (138 + 92 - 0.81 * (28 + 23), (1375 + 1100) * 32),
    "preferred-ft": (37 - 0.81 * 14, 650 * 32), "ppo": (397 - 0.81 * 76, 760 * 64),
    "optimum": (47, 64 * 256),
    # theory/optimum.py on the tiny sweep's 6 policies (16 samples each per prefix beside the
    # reference's 64; every sample scored under the 7 models), after the sweep of `--seeds 3
    # --online` (79 s; 78 s alone on the 1-seed run's checkpoints)
    "optimum, mixture": (79, 160 * 256),
    # online/dpo.py: seed 0's 8 runs of that `--seeds 3 --online` run (2,200 steps of 32 pairs,
    # 237 s side by side), less their 47 live evaluations at the rate above
    "online dpo": (237 - 0.81 * 47, 2200 * 32),
    "evaluate": (80, 79 * 256 + 256 * (4 + 16)),  # sampled sequences
}
# frontier.py --jobs 2 against one process, the same tiny sweep on the same 2-core machine (with
# the torch.multinomial sampler of the time): the sweep runs and the optimum took
# PARALLEL_SPEEDUP times less wall time side by side (each run was slower side by side on one
# thread than alone on two, hence not 2x). The peak disk above assumes one run at a time: with
# jobs, add up to jobs - 1 runs' checkpoint in training.
PARALLEL_SPEEDUP = 1.39
# docs/benchmarks.md: bench/gpu.py on one H100 80GB (bf16 autocast, eager), the SFT step's
# tokens/s, the DPO step's pairs/s, forward tokens/s, sampled 48-token sequences/s, RoBERTa-large
# (siebert's shape) texts/s.
GPU_RUN = {
    "gpt2-large": dict(at="gpt2-large, micro-batch 16", params=774.03e6, sft=26.3e3, dpo=159,
                       forward=56e3, sample=173, score=4.6e3),
    "gpt2": dict(at="GPT-2 124M, micro-batch 32; its forward not measured: 3x the SFT step's",
                 params=124.44e6, sft=149e3, dpo=1101, forward=3 * 149e3, sample=478,
                 score=4.6e3),
}


# GPU memory (bf16 autocast, fp32 weights): weights, gradients and optimizer state are counted
# exactly; activations per token of a micro-batch are ACT_LAYER bytes per layer and width unit plus
# ACT_VOCAB per vocabulary entry (the logits in bf16, their fp32 log-softmax and its gradient).
# The two constants fit docs/benchmarks.md's two measurements, gpt2-large on an H100 at
# micro-batch 16: the SFT step (128 tokens, AdamW) peaked at 15.1 GB, the DPO step (pairs of 56
# tokens, RMSprop) at 11.8 GB; other sizes are scaled by the formula, unmeasured. An evaluation's
# forward keeps EVAL_VOCAB bytes per token and vocabulary entry (both models' logits in fp32, their
# log-softmaxes and the exact KL's product), and sampling a KV cache in bf16.
ACT_LAYER, ACT_VOCAB, EVAL_VOCAB = 20, 10, 16
GPU_CARD = 24e9  # the card the paper preset should fit
# The fixed costs of the GPU presets' runs (model loads, checkpoint writes, the test prefixes),
# measured by bench/eval_cost.py at the gpt2 shapes on the 2-core CPU machine (docs/benchmarks.md):
# (seconds, bytes read or written). Loads and writes are scaled by bytes from these; a GPU
# machine's disk and host may be faster or slower (unmeasured). Process start-up is not counted.
FIXED = {"load": (1.74, 497.8e6),  # GPT-2 124M's model.safetensors into GPT.from_pretrained
         # RoBERTa-large, with its id map then built by a 0.19 s loop (now filled lazily)
         "load ground truth": (2.64, 1.42e9),
         "write": (1.29, 497.8e6),  # a GPT-2 124M checkpoint folder, written atomically
         "prefixes": (1.51, 0)}  # the test split read and cleaned, 512 prefixes taken


def gpu_memory(kind: str, c, sz: dict, gt_params: float, eval_batch: int) -> tuple:
    """(bytes at the step's peak while it trains, bytes while one of its checkpoints is evaluated
    live beside its training state, 0 for a step that is not a sweep run) on one GPU, by the
    formula above. eval_batch: the evaluation's micro-batch."""
    g = sz["config"]
    P, W, GT = sz["params"], 4 * sz["params"], 4 * gt_params
    act = lambda tokens: tokens * (ACT_LAYER * g.n_layer * g.n_embd + ACT_VOCAB * g.vocab_size)
    kv = lambda seqs: seqs * PAIR_LEN * g.n_layer * 2 * g.n_embd * 2  # a KV cache in bf16
    fwd = lambda seqs: seqs * PAIR_LEN * EVAL_VOCAB * g.vocab_size
    evaluation = lambda b: kv(b) + fwd(b)  # sample b completions, then their KL's forwards
    if kind == "pairs":  # the SFT model samples, the ground truth scores
        return W + GT + kv(c.chunk * c.samples), 0.0
    if kind.startswith("optimum"):
        return W * (1 + len(set(c.policies))) + GT + evaluation(c.micro_batch), 0.0
    if kind == "evaluate":  # the reference, a policy, the ground truth, the RM for best-of-N
        return 3 * W + GT + evaluation(c.micro_batch), 0.0
    optimizer = 4 * P if getattr(c, "optimizer", "adamw") == "rmsprop" else 8 * P
    static = W + optimizer  # between steps: weights and optimizer state (gradients are freed)
    tokens = {"sft": c.micro_batch * getattr(c, "max_len", 0),
              "ground truth": c.micro_batch * getattr(c, "max_len", 0),
              "preferred-ft": c.micro_batch * PAIR_LEN, "ppo": c.micro_batch * PAIR_LEN,
              }.get(kind, 2 * c.micro_batch * PAIR_LEN)  # DPO, the RM: both sides of a pair
    step = 4 * P + act(tokens)  # during a step: the gradients and the activations
    frozen, sample = 0.0, 0.0
    if kind in ("ppo", "online dpo"):  # the reference, the reward's model; their sampling
        frozen = W + (GT if c.reward == "gt" else W)
        sample = kv(c.gen_batch) + fwd(c.micro_batch)
    train = static + frozen + max(step, sample)
    live = 0.0
    if kind in ("dpo", "preferred-ft", "ppo", "online dpo"):  # a sweep run, evaluated live:
        live = static + frozen + 2 * W + GT + evaluation(eval_batch)  # + reference, checkpoint
    return train, live


def model_config(cfg):
    """(name, GPTConfig, compact vocabulary or None) of the sweep's model, from the preset (a
    local --base_model: its config.json)."""
    from data import Tokenizer, synthetic_vocab
    from model import GPTConfig, config_from_hf

    from plumbing.utils import read_hf_config

    p = PRESETS[cfg.preset]
    s = SFTConfig(**dict(p.sft, init=cfg.base_model or p.sft["init"]))
    if s.init in GPT2_SIZES:
        L, H, C = GPT2_SIZES[s.init]
        return s.init, GPTConfig(n_layer=L, n_head=H, n_embd=C), None
    if s.init != "scratch":
        return s.init, config_from_hf(read_hf_config(s.init)), None
    compact = s.vocab == "auto" and (cfg.dataset or p.dataset) == "synthetic"
    tok = Tokenizer(synthetic_vocab() if compact else None)  # as sft.build_model makes it
    return (f"scratch {s.n_layer}x{s.n_embd}", GPTConfig(
        block_size=s.block_size, vocab_size=tok.vocab_size, n_layer=s.n_layer, n_head=s.n_head,
        n_embd=s.n_embd, eos_token_id=tok.eos_id), tok.vocab)


def safetensors_bytes(shapes: dict, metadata: dict | None = None) -> int:
    """Size of a float32 safetensors file: 8 bytes, the JSON header padded to 8, the data."""
    header, n = dict({"__metadata__": metadata} if metadata else {}), 0
    for k, s in sorted(shapes.items()):  # safetensors' order (one dtype: by name)
        header[k] = {"dtype": "F32", "shape": list(s), "data_offsets": [n, n + 4 * math.prod(s)]}
        n += 4 * math.prod(s)
    return 8 + -(-len(json.dumps(header, separators=(",", ":"))) // 8) * 8 + n


def sizes(cfg) -> dict:
    """The model's name and parameter count; the bytes of its checkpoint folder (config.json,
    model.safetensors as model.save_pretrained writes it, compact_vocab.json) and of a linear
    head file (reward or value head)."""
    import torch

    from model import GPT, config_to_hf

    name, gcfg, vocab = model_config(cfg)
    with torch.device("meta"):
        model = GPT(gcfg)
    shapes = {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}
    return dict(name=name, params=model.num_params(non_embedding=False), config=gcfg,
                model=safetensors_bytes(shapes, {"format": "pt"})
                + len(json.dumps(config_to_hf(gcfg), indent=2))
                + (len(json.dumps(vocab)) if vocab else 0),
                head=safetensors_bytes({"bias": (1,), "weight": (1, gcfg.n_embd)}))


def stage(c, pairs: PairsConfig):
    """(kind, optimizer steps, examples, their unit) of one step's config."""
    per_prompt = pairs.samples * (pairs.samples - 1) // 2
    n_pairs = pairs.n_prefixes * per_prompt
    held = lambda eval_size: -(-eval_size // per_prompt) * per_prompt  # whole prompts held out
    if isinstance(c, SFTConfig):
        return ("preferred-ft" if c.pairs else "sft"), c.steps, c.steps * c.batch_size, "sequences"
    if isinstance(c, RMConfig):
        label = c.objective == "label"
        n = TRAIN_REVIEWS.get(c.dataset, 25000) if label else n_pairs - held(c.eval_size)
        s = max(1, c.epochs * n // c.batch_size)
        return ("ground truth" if label else "reward model", s, s * c.batch_size,
                "reviews" if label else "pairs")
    if isinstance(c, PairsConfig):
        return "pairs", -(-c.n_prefixes // c.chunk), c.n_prefixes * c.samples, "completions"
    if isinstance(c, OnlineDPOConfig):  # (before DPOConfig: it is one)
        return "online dpo", c.steps, c.steps * c.batch_size, "pairs"
    if isinstance(c, DPOConfig):
        s = c.steps or max(1, (n_pairs - held(c.eval_size)) // c.batch_size)
        return "dpo", s, s * c.batch_size, "pairs"
    if isinstance(c, PPOConfig):
        return "ppo", c.steps, c.steps * c.batch_size, "rollouts"
    if isinstance(c, OptimumConfig):  # the reference's samples, and the policies' (a mixture)
        n = (c.M + len(c.policies) * c.n_per_policy) * c.n_prefixes
        return ("optimum, mixture" if c.policies else "optimum"), 0, n, "samples"
    return "evaluate", 0, c.n_prefixes * sum(c.best_of), "best-of-N samples"


def seconds(kind: str, n: int, c, rate: dict | None) -> float:
    """Estimated seconds of `n` units of a stage: on the CPU (rate None) at the tiny run's seconds
    per unit, on a GPU from the benchmark's throughputs (`rate`). Kind "checkpoint": evaluating
    n samples of a checkpoint (sample, the policy's and reference's forwards, the scorer)."""
    if rate is None:
        t, units = CPU_RUN["evaluate" if kind == "checkpoint" else kind]
        return n * t / units
    gen, fwd, score, train = (1 / rate["sample"], PAIR_LEN / rate["forward"], 1 / rate["score"],
                              PAIR_LEN / rate["sft"])
    per_unit = {
        "sft": getattr(c, "max_len", 0) / rate["sft"], "preferred-ft": train,
        "ground truth": getattr(c, "max_len", 0) / rate["sft"], "reward model": 1 / rate["dpo"],
        "dpo": 1 / rate["dpo"], "pairs": gen + score, "optimum": gen + score,
        # each sample also scored under every component, the reference included
        "optimum, mixture": gen + score + (1 + len(getattr(c, "policies", ()))) * fwd,
        # a DPO step, plus per pair its share of the pool's samples, scores and reference pass
        "online dpo": 1 / rate["dpo"] + online_samples_per_pair(c) * (gen + score)
        + 2 * PAIR_LEN / rate["forward"],
        # rollout, the old policy's and reference's forwards, the reward, ppo_epochs updates
        "ppo": gen + 2 * fwd + (score if getattr(c, "reward", "") == "gt" else fwd)
        + getattr(c, "ppo_epochs", 0) * train,
        "evaluate": gen + fwd,  # best-of-N: a sample and its RM score (+ the ground truth, below)
        "checkpoint": gen + 2 * fwd + score,
    }
    return n * per_unit[kind]


def online_samples_per_pair(c) -> float:
    """Completions online DPO samples per pair it trains on: a pool's samples over the pairs its
    refresh_every steps use (0 with refresh_every 0: one pool, negligible)."""
    if not getattr(c, "refresh_every", 0):
        return 0.0
    return c.pool_prompts * c.samples / (c.refresh_every * c.batch_size)


def gpu_rate(sz: dict) -> dict:
    """The benchmark's throughputs of the measured GPT-2 size nearest this model's, scaled by
    parameter count if it is another size."""
    near = min(GPU_RUN, key=lambda k: abs(math.log(GPU_RUN[k]["params"] / sz["params"])))
    r = dict(GPU_RUN[near])
    if sz["name"] != near:
        f = r["params"] / sz["params"]
        r.update({k: r[k] * f for k in ("sft", "dpo", "forward", "sample")},
                 at=r["at"] + f"; scaled by parameter count to {sz['params'] / 1e6:.0f}M")
    return r


def budget(cfg, steps) -> tuple[list[dict], dict]:
    """One row per step of frontier.plan: its counts, checkpoints, bytes and estimated seconds
    (training, and for a sweep run evaluating its checkpoints); and the model's sizes."""
    sz = sizes(cfg)
    rate = None if sz["name"].startswith("scratch") else gpu_rate(sz)
    pairs = next(c for _, _, c in steps if isinstance(c, PairsConfig))
    final = steps[-1][2]
    n_pairs = pairs.n_prefixes * pairs.samples * (pairs.samples - 1) // 2
    rows = []
    gt_params = roberta_params() if rate else 0.0
    for name, _, c in steps:
        kind, n_steps, examples, unit = stage(c, pairs)
        every = getattr(c, "save_every", None)
        ckpts = saved_steps(n_steps, every) if every else []
        floats = 4 if kind in ("dpo", "online dpo") and c.optimizer == "rmsprop" else 8  # a param
        state = (STATE_EXTRA + floats * sz["params"] * (kind != "pairs")
                 if not kind.startswith(("optimum", "evaluate")) else 0)
        head = kind in ("reward model", "ground truth", "ppo")  # reward_head, value_head
        rm_json = 17 * (kind in ("reward model", "ground truth"))  # reward_head.json
        t, files = seconds(kind, examples, c, rate), n_steps * LOG_ROW
        if kind == "pairs":
            files += n_pairs * PAIR_ROW.get(pairs.dataset, 1300)
        dpo_before = any(r["kind"] == "dpo" for r in rows)  # the reference log-probs cached
        if kind == "dpo" and not dpo_before:  # once per sweep
            files += 8 * n_pairs  # the reference log-probs' cache
            t += 2 * n_pairs * PAIR_LEN / rate["forward"] if rate else 0
        if kind == "online dpo":  # the pools since the last checkpoint, and the one it is in
            kept = -(-c.save_every // c.refresh_every) + 1 if c.refresh_every else 1
            files += kept * c.pool_prompts * c.samples * (c.samples - 1) // 2 * PAIR_ROW.get(
                pairs.dataset, 1300)
        if kind.startswith("optimum"):  # its samples' rewards (and log-probs under each model)
            files += 8 * examples * (2 + len(c.policies)) if c.policies else 4 * examples
        if kind == "evaluate":
            files += 120_000  # frontier.jsonl and .png
            t += seconds("checkpoint", c.n_prefixes * len(c.best_of), c, rate) if rate else 0
        sweep = getattr(c, "out_dir", None) in final.runs
        picked = [s for i, s in enumerate(ckpts) if i % final.every == final.every - 1
                  or i == len(ckpts) - 1]  # evaluate.checkpoints_of
        first = not any(r["sweep"] for r in rows)  # evaluates the reference too
        ckpt_bytes = sz["model"] + head * sz["head"] + rm_json
        rows.append(dict(
            name=name, kind=kind, steps=n_steps, examples=examples, unit=unit, ckpts=len(ckpts),
            ckpt_bytes=ckpt_bytes,
            best=kind in ("reward model", "ground truth"), state_bytes=state, file_bytes=files,
            seconds=t, sweep=sweep, evaluated=len(picked) if sweep else 0,
            gpu=gpu_memory(kind, c, sz, gt_params, final.micro_batch) if rate else (0.0, 0.0),
            eval_seconds=seconds("checkpoint", (len(picked) + first) * final.n_prefixes, c, rate)
            if sweep else 0.0,
            fixed=(fixed_seconds(kind, c, len(ckpts), ckpt_bytes, state, 4 * gt_params, sz,
                                 ref_cached=kind == "dpo" and dpo_before)
                   + (eval_fixed_seconds(len(picked), sz, 4 * gt_params) if sweep else 0.0))
            if rate else 0.0))
    return rows, dict(sz, rate=rate)


def fixed(what: str, n_bytes: float) -> float:
    """Seconds to load or write n_bytes at FIXED's measured rate for `what`."""
    return FIXED[what][0] * n_bytes / FIXED[what][1]


def fixed_seconds(kind: str, c, ckpts: int, ckpt_bytes: int, state_bytes: int, gt_bytes: float,
                  sz: dict, ref_cached: bool) -> float:
    """Seconds of a step's fixed costs at FIXED's rates: the models it loads (GPT-sized ones and
    the ground truth) and its checkpoints and state.pt, written at each save (+ the RM's and the
    label classifier's best/). ref_cached: a DPO run after the sweep's first reads the reference
    log-probs from the cache and loads no reference."""
    gpts = {"sft": 1, "preferred-ft": 1, "reward model": 1, "ground truth": 1, "pairs": 1,
            "dpo": 2 - ref_cached,
            "evaluate": 2,  # the reference and the RM of best-of-N (sweep runs: evaluated live)
            "optimum": 1, "optimum, mixture": 1 + len(set(getattr(c, "policies", ())))}.get(kind)
    gt = kind in ("pairs", "evaluate") or kind.startswith("optimum")
    if gpts is None:  # PPO and online DPO: the policy, the reference and the reward's model
        gpts, gt = 2 + (c.reward == "rm"), c.reward == "gt"
    writes = (ckpts * (ckpt_bytes + state_bytes)
              + ckpt_bytes * (kind in ("reward model", "ground truth")))
    return (fixed("load", gpts * sz["model"]) + gt * fixed("load ground truth", gt_bytes)
            + fixed("write", writes) + FIXED["prefixes"][0] * (kind == "evaluate"))


def eval_fixed_seconds(n_checkpoints: int, sz: dict, gt_bytes: float) -> float:
    """A sweep run's live evaluation: the reference, the ground truth and the test prefixes once
    (evaluate.main's `shared`), then each checkpoint's load (the reference's own row, in the first
    run, reuses the reference)."""
    return (fixed("load", (1 + n_checkpoints) * sz["model"])
            + fixed("load ground truth", gt_bytes) + FIXED["prefixes"][0])


def roberta_params() -> int:
    """Parameters of the ground truth of the GPU presets (RoBERTa-large: siebert's shape)."""
    import torch

    from roberta import RobertaClassifier, RobertaConfig

    with torch.device("meta"):
        return sum(p.numel() for p in RobertaClassifier(RobertaConfig()).parameters())


def print_gpu_memory(cfg, rows: list[dict]):
    """The peak GPU memory of the sweep by the formula of gpu_memory, step by step, and whether it
    fits GPU_CARD; where a live evaluation is what overflows, the flag that moves it after each
    run (when the training state is gone)."""
    gb = lambda b: f"{b / 1e9:.1f} GB"
    train = max(rows, key=lambda r: r["gpu"][0])
    live = max(rows, key=lambda r: r["gpu"][1])
    after = max(r["gpu"][0] for r in rows)  # evaluating after each run: the final one's peak
    print(f"GPU memory (bf16, estimated by plumbing/plan.py's gpu_memory, fit to two measured "
          f"gpt2-large steps): training peak {gb(train['gpu'][0])} ({train['name']}); "
          f"evaluating a checkpoint while its run trains {gb(live['gpu'][1])} ({live['name']}).")
    peak = after if cfg.keep_checkpoints else max(after, live["gpu"][1])
    if peak <= GPU_CARD:
        print(f"  fits a {GPU_CARD / 1e9:.0f} GB card ({gb(peak)} at most).")
    elif after <= GPU_CARD:
        print(f"  over a {GPU_CARD / 1e9:.0f} GB card by the live evaluation (it loads the "
              f"reference, the checkpoint and the ground truth beside the run's training state); "
              f"--keep_checkpoints evaluates each run after it instead (peak {gb(after)}: fits), "
              f"at the disk cost of keeping every checkpoint (above).")
    else:
        print(f"  over a {GPU_CARD / 1e9:.0f} GB card ({gb(after)} in training): smaller "
              f"--micro_batch values or a larger card.")


def disk(rows: list[dict], keep_checkpoints: bool = False, keep_last: bool = True):
    """(peak bytes, the step at the peak, bytes at the end) of the sweep folder, step after step,
    as frontier.py keeps it. While a sweep run trains, its checkpoints are evaluated and deleted
    as they come: at a save it holds the one it resumes from and the new one, and state.pt beside
    the temporary copy that replaces it; any other run holds all its checkpoints and that. After
    a run: a sweep run keeps its last checkpoint or none (keep_last), the reward model and label
    classifier their best/ alone, the SFT model its checkpoints (a row's "kept": that many);
    state.pt goes. keep_checkpoints:
    every run holds all of it, during and after."""
    held, peak, at = 0, 0, ""
    for r in rows:
        folders = r["ckpts"] + r["best"]
        live = r["sweep"] and not keep_checkpoints
        now = (held + r["file_bytes"] + (min(folders, 2) if live else folders) * r["ckpt_bytes"]
               + 2 * r["state_bytes"])
        if now > peak:
            peak, at = now, r["name"]
        if keep_checkpoints:
            held += r["file_bytes"] + folders * r["ckpt_bytes"] + r["state_bytes"]
        elif r["sweep"]:
            held += r["file_bytes"] + (min(folders, 1) if keep_last else 0) * r["ckpt_bytes"]
        else:
            held += r["file_bytes"] + r.get("kept", 1 if r["best"] else folders) * r["ckpt_bytes"]
    return peak, at, held


def print_plan(cfg, steps) -> dict:
    """Print the plan of a sweep (see the module docstring); return it as a dict."""
    rows, sz = budget(cfg, steps)
    gb = lambda b: f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.1f} MB"
    hm = lambda s: f"{s / 3600:.2f} h" if s >= 600 else f"{s:.0f} s"
    out = os.path.dirname(steps[-1][2].out)  # the evaluation's frontier.jsonl is in the sweep's
    print(f"frontier.py --preset {cfg.preset}: {len(steps)} steps into {out}, model {sz['name']} "
          f"({sz['params'] / 1e6:.1f}M parameters). A plan: nothing is loaded or run, times are "
          f"estimates.")
    if any(getattr(c, "patience", 0) for _, _, c in steps):
        print("Early stopping (patience) may end a run before its steps: for such runs the steps, "
              "checkpoints, disk and time below are the most they can take.")
    gpu = sz["rate"] is not None  # a GPU preset: its memory per step (gpu_memory)
    print(f"{'':>3} {'step':<25}{'opt. steps':>10} {'examples':>25} {'ckpts':>7} {'each':>9} "
          f"{'time':>8} {'+ eval':>7}" + (f" {'+ fixed':>8} {'GPU GB':>11}" if gpu else ""))
    for i, r in enumerate(rows, 1):
        ex = f"{r['examples']:,} {r['unit']}" if r["examples"] else ""
        ck = (f"{r['ckpts']}" + ("+best" if r["best"] else "")) if r["ckpts"] else ""
        mem = f"{r['gpu'][0] / 1e9:.1f}" + (f"/{r['gpu'][1] / 1e9:.1f}" if r["gpu"][1] else "")
        print(f"{i:>3} {r['name']:<25}{r['steps'] or '':>10} {ex:>25} {ck:>7} "
              f"{gb(r['ckpt_bytes']) if r['ckpts'] else '':>9} {hm(r['seconds']):>8} "
              f"{hm(r['eval_seconds']) if r['sweep'] else '':>7}"
              + (f" {hm(r['fixed']):>8} {mem:>11}" if gpu else ""))
    d = {k: disk(rows, **kw) for k, kw in (("pruned", {}), ("no_keep_last", dict(keep_last=False)),
                                          ("keep_checkpoints", dict(keep_checkpoints=True)))}
    mode = ("keep_checkpoints" if cfg.keep_checkpoints else
            "pruned" if keeps_last(cfg) else "no_keep_last")
    print(f"checkpoints: {sum(r['ckpts'] + r['best'] for r in rows)} written, "
          f"{gb(rows[0]['ckpt_bytes'])} each (fp32 safetensors, + a head for the RM and PPO); "
          f"{sum(r['evaluated'] for r in rows)} evaluated (+ the reference); state.pt "
          f"{gb(8 * sz['params'])} (AdamW), {gb(4 * sz['params'])} (RMSprop)")
    print(f"disk of {out}: the peak (during the step), at the end; * these flags:")
    for k, what in (("pruned", "--keep_last: a sweep run keeps its last checkpoint"),
                    ("no_keep_last", "--no-keep_last: a sweep run keeps its rows only"),
                    ("keep_checkpoints", "--keep_checkpoints: everything kept")):
        peak, at, end = d[k]
        print(f"{'*' if k == mode else ' '} {gb(peak):>10} ({at}), {gb(end)} at the end: {what}")
    print("  not counted: the Hugging Face cache (the base model, siebert 1.4 GB, IMDb)")
    if gpu:
        print_gpu_memory(cfg, rows)
    total = sum(r["seconds"] + r["eval_seconds"] + r["fixed"] for r in rows)
    if sz["rate"] is None:
        basis = ("scaled from the tiny preset's stage times on a 2-core CPU (docs/results.md; "
                 "seconds / units: " + ", ".join(
                     f"{k} {t:g} / {u:,}" for k, (t, u) in CPU_RUN.items()) + ")")
    else:
        r = sz["rate"]
        basis = (f"estimated from docs/benchmarks.md (bench/gpu.py, one H100, bf16; {r['at']}"
                 f"): SFT step {r['sft']:,.0f} tokens/s (SFT, Preferred-FT, PPO updates), DPO step "
                 f"{r['dpo']:,.0f} pairs/s (DPO, Unlikelihood, RM), forward {r['forward']:,.0f} "
                 f"tokens/s, sampling {r['sample']:,.0f} sequences/s, RoBERTa-large "
                 f"{r['score']:,.0f} texts/s; + fixed: the model loads, checkpoint and state.pt "
                 f"writes and the test prefixes (the evaluation's once per sweep run), at "
                 f"bench/eval_cost.py's rates on the 2-core CPU machine scaled by bytes (GPT-2 "
                 f"124M: load {FIXED['load'][0]:g} s, checkpoint write {FIXED['write'][0]:g} s; "
                 f"RoBERTa-large load {FIXED['load ground truth'][0]:g} s; prefixes "
                 f"{FIXED['prefixes'][0]:g} s); process start-up is not counted")
    print(f"time: {hm(total)} ({hm(sum(r['eval_seconds'] for r in rows))} of it evaluating the "
          f"sweep runs" + (f", {hm(sum(r['fixed'] for r in rows))} fixed costs" if gpu else "")
          + f") one step at a time, {basis}.")
    if (jobs := n_jobs(cfg)) > 1:  # the sweep runs and the optimum side by side
        side = sum(r["seconds"] + r["eval_seconds"] + r["fixed"] for r in rows
                   if r["sweep"] or r["kind"] == "optimum")
        total = total - side + side / PARALLEL_SPEEDUP
        print(f"  with {jobs} jobs (--jobs): {hm(total)}, taking the sweep runs and the "
              f"optimum side by side as {PARALLEL_SPEEDUP:g}x faster: the speed-up measured with "
              f"2 jobs on 2 CPU cores (other counts of jobs or cores: not measured, not scaled)")
    return dict(rows=rows, sizes=sz, disk=d, mode=mode, seconds=total)
