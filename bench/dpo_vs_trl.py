"""Our DPO step against TRL's DPOTrainer step, side by side: time per step and peak memory.

The same GPT-2 weights, pairs, batch, precision, optimizer and loss on both sides, the steps
interleaved in one run. What each side runs, and what is held equal:
- weights: one folder written by our GPT.save_pretrained (random GPT-2 weights of --size, or
  --init), loaded into our GPT with speed_up (as dpo.py loads it) and into transformers'
  GPT2LMHeadModel for TRL.
- pairs: --batch synthetic pairs of token ids, prompts of 2-8 tokens (the IMDb prefixes) and
  completions of 40-48 tokens ending in EOS (the IMDb presets sample at most 48 new tokens; TRL
  ends every completion with EOS). TRL reads them as text through a word-per-id tokenizer that
  gives back the same ids; the bench checks that it does. Every step trains on the same batch.
- reference log-probs: precomputed on both sides, before the steps (our loop always caches them;
  TRL with precompute_ref_log_probs=True), so neither step runs a reference forward.
- precision: fp32 on the CPU; on CUDA bf16 autocast on both sides (ours: plumbing.utils.autocast;
  TRL: bf16=True, mixed precision through accelerate), fp32 weights and optimizer state.
- optimizer: fused torch AdamW on both (ours: dpo.optimizer, optimizer='adamw'; TRL:
  optim="adamw_torch_fused"), the same lr, betas (0.9, 0.999), eps 1e-8, weight decay 0, a
  constant learning rate (no warm-up, no decay), gradients clipped at the same global norm.
- loss: DPO's sigmoid loss at the same beta, one micro-batch per step (no accumulation), no
  dropout, no gradient checkpointing (TRL's config turns it on by default: turned off here).
- a step: ours is dpo.train_step as the loop calls it (collate, forward over the concatenated
  chosen + rejected batch, loss, backward, its logged statistics, clip, AdamW step). TRL's is its
  Trainer's step inside trainer.train(), timed from on_step_begin to on_step_end (forward through
  its fused LM head, loss and its logged metrics, backward, clip, AdamW step, scheduler step,
  zero_grad); its dataloader collates the batch before on_step_begin, untimed.
- interleaving: on_step_end of each TRL step runs one step of ours, so the steps alternate TRL,
  ours, TRL, ours, ...; the first --warmup of each are left out of the medians.
- memory: each side alone in a subprocess of its own, 1 + 2 steps; on CUDA the peak of
  torch.cuda.max_memory_allocated over the steps; on the CPU the peak resident set over the steps
  (Linux's VmHWM, reset before the first step) and the same less the resident set after the
  side's imports (torch and our files; TRL adds transformers, TRL and datasets). The memory runs
  take the policy's own weights as the reference (the values of the cached reference log-probs
  do not change the memory).

The check: each side's first two steps (warm-up included) are compared after the run, the loss,
the mean chosen and rejected rewards and the gradient norm of step 1 (the initial weights) and
the loss of step 2 (after one AdamW update): equal within fp32 rounding on the CPU (an
AssertionError otherwise); on CUDA the differences are printed, bf16 rounding the two sides
differently. With random weights the reference is another random model, so that step 1's loss
is not ln 2 whatever the two sides compute. tests/test_bench_trl.py runs it on a tiny GPT.

    python bench/dpo_vs_trl.py                  # GPT-2 124M dimensions, 8 pairs, CPU fp32
    python bench/dpo_vs_trl.py --size tiny --vocab 512 --reps 2 --batch 4   # seconds
    python bench/dpo_vs_trl.py --batch 64 --warmup 3 --reps 20   # on a GPU: bf16 autocast
"""

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from common import SIZES, setup_threads, table

import dpo  # noqa: E402  (common.py put the repo root on sys.path)
from model import GPT, GPTConfig, config_from_hf  # noqa: E402

from plumbing.speed import speed_up  # noqa: E402
from plumbing.utils import read_hf_config  # noqa: E402

EOS = "<|endoftext|>"


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="gpt2", choices=list(SIZES), help="random weights' shape")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--init", default=None,
                    help="weights: a GPT-2 folder or hub name instead of random weights")
    ap.add_argument("--ref", default=None,
                    help="reference: 'init' (the policy's weights, as DPO runs), 'random' (other "
                         "random weights; the default with random weights), or a folder")
    ap.add_argument("--batch", type=int, default=8, help="pairs per step (one micro-batch)")
    ap.add_argument("--prompt_len", type=int, nargs=2, default=(2, 8), metavar=("MIN", "MAX"))
    ap.add_argument("--completion_len", type=int, nargs=2, default=(40, 48),
                    metavar=("MIN", "MAX"), help="completion tokens, the final EOS included")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate, constant")
    ap.add_argument("--grad_clip", type=float, default=10.0, help="max global gradient norm")
    ap.add_argument("--device", default="auto", help="auto: cuda > cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--reps", type=int, default=5, help="timed steps of each side")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps of each side")
    ap.add_argument("--seed", type=int, default=0, help="weights and pairs")
    ap.add_argument("--no_memory", action="store_true", help="skip the two memory runs")
    ap.add_argument("--memory", choices=("ours", "trl"), help=argparse.SUPPRESS)  # a child run
    args = ap.parse_args(argv)
    if args.warmup < 1 and args.memory is None:
        ap.error("--warmup must be >= 1: the check reads the first two steps")
    for name in ("prompt_len", "completion_len"):
        lo, hi = getattr(args, name)
        if not 1 <= lo <= hi:
            ap.error(f"--{name} MIN MAX needs 1 <= MIN <= MAX")
    return args


def device_of(args) -> str:
    """auto: CUDA where there is one, else the CPU (not MPS: the bench runs CUDA or the CPU)."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- inputs


def write_weights(args, folder: str) -> tuple[str, str]:
    """(policy folder, reference folder), both written by our save_pretrained."""
    policy = os.path.join(folder, "policy")
    if args.init:
        model = GPT.from_pretrained(args.init)
    else:
        n_layer, n_head, n_embd = SIZES[args.size]
        torch.manual_seed(args.seed)
        model = GPT(GPTConfig(vocab_size=args.vocab, n_layer=n_layer, n_head=n_head,
                              n_embd=n_embd, eos_token_id=args.vocab - 1))
    model.save_pretrained(policy)
    ref = args.ref or ("init" if args.init else "random")
    if ref == "init":
        return policy, policy
    if ref == "random":
        torch.manual_seed(args.seed + 1)
        other = GPT(model.config)
    else:
        other = GPT.from_pretrained(ref)
    other.save_pretrained(os.path.join(folder, "ref"))
    return policy, os.path.join(folder, "ref")


def make_pairs(args, cfg: GPTConfig) -> list[dict]:
    """--batch pairs of random token ids (never EOS inside); each completion ends with EOS."""
    vocab, eos = cfg.vocab_size, cfg.eos_token_id
    g = torch.Generator().manual_seed(args.seed)
    length = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))
    ids = lambda n: [t + (t >= eos)  # every id but EOS
                     for t in torch.randint(0, vocab - 1, (n,), generator=g).tolist()]
    return [dict(prompt_ids=ids(length(*args.prompt_len)),
                 chosen_ids=ids(length(*args.completion_len) - 1) + [eos],
                 rejected_ids=ids(length(*args.completion_len) - 1) + [eos])
            for _ in range(args.batch)]


def word_tokenizer(vocab: int, eos: int):
    """A transformers tokenizer whose words are the ids themselves: "t17" is token 17, EOS is the
    end-of-text token. TRL tokenizes text; this one gives it back exactly our ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {(EOS if i == eos else f"t{i}"): i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def as_text(rows: list[dict], eos: int) -> dict:
    """The pairs as TRL's text columns: prompt, chosen and rejected (each after a space)."""
    text = lambda ids: " ".join(EOS if i == eos else f"t{i}" for i in ids)
    return {"prompt": [text(r["prompt_ids"]) for r in rows],
            "chosen": [" " + text(r["chosen_ids"]) for r in rows],
            "rejected": [" " + text(r["rejected_ids"]) for r in rows]}


# ----------------------------------------------------------------------------- our step


class OneProcess:
    """What dpo.train_step reads of plumbing.runs.Run, for one process and no run folder: the
    step number, the micro-batch count, no DDP, the finite-loss check and the step's clock."""

    world, rank = 1, 0

    def __init__(self):
        self.step, self._t0 = 0, time.time()

    def begin(self):
        self.step, self._t0 = self.step + 1, time.time()

    def micro_batches(self, batch_size, micro_batch):
        return batch_size // micro_batch

    def accumulate(self, model, k, accum):
        return contextlib.nullcontext()

    def check(self, loss):
        if not torch.isfinite(loss).all():
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")

    def mean(self, value):
        return value

    def tokens_per_s(self, tokens):
        return tokens / (time.time() - self._t0)


def our_step(args, device, policy_dir, ref_dir, rows):
    """A function taking one DPO step of ours as dpo.py's loop does, returning its log row. The
    reference log-probs are computed first, as dpo.reference_logps does (without its disk
    cache): by a reference model freed after, or, when the reference is the policy's own
    weights, by the policy before its first step (no second model in memory, as when the loop
    finds the cache, and as TRL precomputes them with no ref_model)."""
    eos = rows[0]["chosen_ids"][-1]
    model = speed_up(GPT.from_pretrained(policy_dir)).to(device).train()
    ref = model if ref_dir == policy_dir else speed_up(GPT.from_pretrained(ref_dir)).to(device)
    ref_c, ref_r = dpo.sequence_logps(ref.eval(), rows, eos, len(rows), progress=False)
    del ref
    model.train()
    cfg = dpo.DPOConfig(loss="dpo", beta=args.beta, optimizer="adamw", lr=args.lr, warmup=0,
                        grad_clip=args.grad_clip, batch_size=len(rows), micro_batch=len(rows),
                        device=device)
    dpo.check_config(cfg)
    opt, run, batch = dpo.optimizer(cfg, model, device), OneProcess(), list(range(len(rows)))

    def step():
        run.begin()
        return dpo.train_step(cfg, run, model, opt, rows, batch, ref_c, ref_r, eos)

    return step


# ----------------------------------------------------------------------------- TRL's step


@contextlib.contextmanager
def quiet():
    """TRL's, transformers' and datasets' progress bars, info logs and deprecation warnings off,
    restored after."""
    import datasets
    from transformers.utils import logging

    old_env, old_level = os.environ.get("TQDM_DISABLE"), logging.get_verbosity()
    bars = (datasets.is_progress_bar_enabled(), logging.is_progress_bar_enabled())
    os.environ["TQDM_DISABLE"] = "1"
    logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if old_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old_env
        logging.set_verbosity(old_level)
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            logging.enable_progress_bar()


def trl_trainer(args, device, policy_dir, ref_dir, rows, out_dir, steps, callbacks=(),
                **overrides):
    """TRL's DPOTrainer on the same weights and pairs, configured as the module docstring says,
    for `steps` optimizer steps; `overrides` change its DPOConfig (the test's mismatches)."""
    from datasets import Dataset
    from transformers import GPT2LMHeadModel, PrinterCallback, ProgressCallback
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    eos = rows[0]["chosen_ids"][-1]
    with quiet():
        model = GPT2LMHeadModel.from_pretrained(policy_dir)
        ref = None if ref_dir == policy_dir else GPT2LMHeadModel.from_pretrained(ref_dir)
    cuda = device.startswith("cuda")
    settings = dict(
        output_dir=out_dir, max_steps=steps, per_device_train_batch_size=len(rows),
        gradient_accumulation_steps=1,
        beta=args.beta, loss_type=["sigmoid"], precompute_ref_log_probs=True,
        precompute_ref_batch_size=len(rows), max_length=None, disable_dropout=True,
        gradient_checkpointing=False, bf16=cuda, fp16=False, use_cpu=not cuda,
        optim="adamw_torch_fused", learning_rate=args.lr, adam_beta1=0.9, adam_beta2=0.999,
        adam_epsilon=1e-8, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=args.grad_clip, seed=args.seed, logging_strategy="steps",
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0)
    if "train_sampling_strategy" in TRLConfig.__dataclass_fields__:  # (transformers 5)
        settings["train_sampling_strategy"] = "sequential"  # the pairs in our order
    settings.update(overrides)
    with quiet():
        trainer = DPOTrainer(model=model, ref_model=ref, args=TRLConfig(**settings),
                             train_dataset=Dataset.from_dict(as_text(rows, eos)),
                             processing_class=word_tokenizer(model.config.vocab_size, eos),
                             callbacks=list(callbacks))
    for cb in (PrinterCallback, ProgressCallback):  # no log lines printed
        trainer.remove_callback(cb)
    data = trainer.train_dataset
    for key in ("prompt_ids", "chosen_ids", "rejected_ids"):  # TRL trains on our very ids
        if data[key] != [r[key] for r in rows]:
            raise AssertionError(f"TRL's tokenized {key} differ from the pairs' ids")
    return trainer


def trl_rows(trainer) -> list[dict]:
    """TRL's per-step log rows (logging_steps=1), in our log's names."""
    keys = {"loss": "loss/train", "rewards/chosen": "rewards/chosen",
            "rewards/rejected": "rewards/rejected", "grad_norm": "grad_norm"}
    return [{ours: row[k] for k, ours in keys.items()} for row in trainer.state.log_history
            if "loss" in row]


# ----------------------------------------------------------------------------- side by side


def side_by_side(args, device, policy_dir, ref_dir, rows, **trl_overrides) -> dict:
    """--warmup + --reps steps of each side, alternating (a TRL step, then one of ours, from TRL's
    on_step_end). Returns the seconds of every step and each side's log rows."""
    from transformers import TrainerCallback

    ours = our_step(args, device, policy_dir, ref_dir, rows)
    times = {"ours": [], "trl": []}
    logs = {"ours": [], "trl": []}

    class Interleave(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kw):
            sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, targs, state, control, **kw):
            sync(device)
            times["trl"].append(time.perf_counter() - self.t0)
            t0 = time.perf_counter()
            logs["ours"].append(ours())
            sync(device)
            times["ours"].append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as out:
        trainer = trl_trainer(args, device, policy_dir, ref_dir, rows, out,
                              args.warmup + args.reps, [Interleave()], **trl_overrides)
        with quiet():
            trainer.train()
    if any(getattr(m, "gradient_checkpointing", False) for m in trainer.model.modules()):
        raise AssertionError("TRL's model recomputed activations (checkpointing); ours does not")
    logs["trl"] = trl_rows(trainer)
    return dict(times=times, logs=logs, trl_optimizer=optimizer_settings(trainer.optimizer),
                trl_param_dtype=str(next(trainer.model.parameters()).dtype),
                n_params=sum(p.numel() for p in trainer.model.parameters()))


def optimizer_settings(opt) -> dict:
    g = opt.param_groups[0]
    return {k: g.get(k) for k in ("lr", "betas", "eps", "weight_decay", "fused")} | {
        "class": type(getattr(opt, "optimizer", opt)).__name__}


def compare(logs: dict, fp32: bool, beta: float) -> dict:
    """Differences between the sides' first two steps; in fp32, an AssertionError if any is
    beyond float rounding. Step 1 runs on the initial weights; step 2's loss is the first
    after an AdamW update (its direction and size depend on beta, lr and the gradient).

    Rounding: each summed log-prob (about -11 per token for GPT-2's vocabulary) is a sum of
    float32 terms computed by different kernels, off by ~1e-7 of its size (measured: 5e-6 in the
    rewards at GPT-2 124M, 8e-8 at the tiny size): the tolerance is 1e-6 of beta times it, at
    least 2e-5; the gradient norms agree to 1e-4 of theirs."""
    a, b = logs["ours"], logs["trl"]
    diffs = {k: abs(a[0][k] - b[0][k]) for k in
             ("loss/train", "rewards/chosen", "rewards/rejected")}
    diffs["grad_norm (relative)"] = abs(a[0]["grad_norm"] / b[0]["grad_norm"] - 1)
    diffs["loss/train after one update"] = abs(a[1]["loss/train"] - b[1]["loss/train"])
    size = max(abs(a[0]["logps/chosen"]), abs(a[0]["logps/rejected"]))
    tol = {k: 1e-4 if "relative" in k else max(2e-5, 1e-6 * beta * size) for k in diffs}
    bad = {k: v for k, v in diffs.items() if v > tol[k]}
    if fp32 and bad:
        raise AssertionError(f"ours and TRL's DPO differ: {bad} (ours {a[:2]}, TRL {b[:2]})")
    return dict(diffs=diffs, ok=not bad)


# ----------------------------------------------------------------------------- memory


def rss_mb(field: str = "VmRSS") -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak(device: str):
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: VmHWM back to the current resident set


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    hwm = rss_mb("VmHWM")  # since reset_peak; without /proc, the whole process's peak
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(args) -> dict:
    """One side alone (this process is the subprocess): --warmup + --reps steps from its own
    setup, the peak measured from the first step's start to the last one's end."""
    device = device_of(args)
    if args.memory == "trl":
        import datasets  # noqa: F401  (the side's imports before the baseline)
        import transformers  # noqa: F401
        import trl  # noqa: F401
    after_imports = rss_mb()
    steps = args.warmup + args.reps
    rows = make_pairs(args, config_from_hf(read_hf_config(args.init)))
    if args.memory == "ours":
        step = our_step(args, device, args.init, args.init, rows)
        sync(device)
        reset_peak(device)
        for _ in range(steps):
            step()
        sync(device)
        peak = peak_mb(device)
    else:
        from transformers import TrainerCallback

        class Peak(TrainerCallback):
            def on_step_begin(self, targs, state, control, **kw):
                if state.global_step == 0:
                    sync(device)
                    reset_peak(device)

        with tempfile.TemporaryDirectory() as out:
            trainer = trl_trainer(args, device, args.init, args.init, rows, out, steps, [Peak()])
            with quiet():
                trainer.train()
        sync(device)
        peak = peak_mb(device)
    return dict(peak_mb=peak, after_imports_mb=after_imports)


def child_argv(args, device, policy_dir, side) -> list[str]:
    """The flags of a memory subprocess: this run's pairs and settings, the policy's weights
    (as its own reference too), 1 + 2 steps."""
    return ["--init", policy_dir, "--ref", "init", "--batch", str(args.batch),
            "--prompt_len", *map(str, args.prompt_len),
            "--completion_len", *map(str, args.completion_len), "--beta", repr(args.beta),
            "--lr", repr(args.lr), "--grad_clip", repr(args.grad_clip), "--device", device,
            "--threads", str(args.threads), "--reps", "2", "--warmup", "1",
            "--seed", str(args.seed), "--memory", side]


def measure_memory(args, device, policy_dir) -> dict:
    """Each side's memory_child in a fresh Python process."""
    out = {}
    for side in ("ours", "trl"):
        r = subprocess.run([sys.executable, os.path.abspath(__file__),
                            *child_argv(args, device, policy_dir, side)],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"the {side} memory run failed:\n{r.stderr[-3000:]}")
        out[side] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


# ----------------------------------------------------------------------------- main


def versions(device: str) -> dict:
    import accelerate
    import transformers
    import trl

    v = dict(torch=torch.__version__, transformers=transformers.__version__,
             trl=trl.__version__, accelerate=accelerate.__version__,
             device=torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
             threads=torch.get_num_threads())
    return v


def main(argv=None):
    args = parse(argv)
    setup_threads(args)
    if args.memory:  # a memory subprocess: one JSON line
        print(json.dumps(memory_child(args)))
        return None
    device = device_of(args)
    fp32 = not device.startswith("cuda")
    v = versions(device)
    print(" ".join(f"{k} {x}" for k, x in v.items()))
    with tempfile.TemporaryDirectory() as folder:
        policy_dir, ref_dir = write_weights(args, folder)
        cfg = config_from_hf(read_hf_config(policy_dir))
        rows = make_pairs(args, cfg)
        r = side_by_side(args, device, policy_dir, ref_dir, rows)
        check = compare(r["logs"], fp32, args.beta)
        mem = None if args.no_memory else measure_memory(args, device, policy_dir)
    tokens = sum(2 * len(x["prompt_ids"]) + len(x["chosen_ids"]) + len(x["rejected_ids"])
                 for x in rows)
    print(f"{r['n_params'] / 1e6:.1f}M parameters, {args.batch} pairs per step ({tokens} tokens), "
          f"prompts {args.prompt_len[0]}-{args.prompt_len[1]} and completions "
          f"{args.completion_len[0]}-{args.completion_len[1]} tokens, beta {args.beta}, "
          f"{'fp32' if fp32 else 'bf16 autocast'} on {device}, reference log-probs "
          f"precomputed on both sides")
    print(f"TRL's optimizer {r['trl_optimizer']}, parameters {r['trl_param_dtype']}")
    print("step 1 and 2, |ours - TRL|: " + ", ".join(f"{k} {x:.2e}"
                                                       for k, x in check["diffs"].items())
          + ("" if check["ok"] else "  (beyond fp32 rounding: bf16)"))
    med = {k: statistics.median(t[args.warmup:]) for k, t in r["times"].items()}
    print(f"median of {args.reps} steps of each side after {args.warmup} warm-up, interleaved")
    header = ["DPO step", "ms", "time x TRL"]
    if mem:
        for m in mem.values():  # the steps' own memory: on the CPU, less the imports
            m["above_imports_mb"] = (m["peak_mb"] - m["after_imports_mb"]
                                     if fp32 and m["after_imports_mb"] else math.nan)
        header += ["peak RSS MB", "above imports MB", "memory x TRL"] if fp32 else [
            "peak GiB (allocated)", "memory x TRL"]
    key = "above_imports_mb" if fp32 else "peak_mb"
    rows_out = []
    for side, name in (("ours", "ours (dpo.train_step)"), ("trl", "TRL DPOTrainer")):
        row = [name, f"{med[side] * 1000:.0f}", f"{med[side] / med['trl']:.2f}"]
        if mem:
            m = mem[side]
            row += ([f"{m['peak_mb']:.0f}", f"{m['above_imports_mb']:.0f}"] if fp32
                    else [f"{m['peak_mb'] / 1024:.2f}"])
            row += [f"{m[key] / mem['trl'][key]:.2f}"]
        rows_out.append(row)
    table(rows_out, tuple(header))
    return dict(seconds=med, ratio=med["ours"] / med["trl"], memory=mem,
                memory_ratio=mem["ours"][key] / mem["trl"][key] if mem else None, versions=v,
                logs=r["logs"], times=r["times"], diffs=check["diffs"])


if __name__ == "__main__":
    main()
