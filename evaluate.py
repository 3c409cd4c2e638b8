"""The reward-vs-KL frontier (paper §6.1, Figure 2 left): every checkpoint of every run, measured
on the protocol's fixed, seeded set of held-out test prefixes.

For each checkpoint, sample completions of those prefixes and measure
  - reward: mean ground-truth P(positive), with its standard error;
  - kl: sequence-level KL(pi || pi_ref) = sum over completion tokens of the per-token KL, computed
    in full from both models' next-token distributions at every sampled position, averaged over
    the samples; kl_k1 and kl_k3 are the Monte-Carlo estimates from the sampled tokens alone.
Best-of-N (sample N from the SFT policy, keep the best by the learned reward model) is an extra
baseline, plotted at its KL bound log N - (N-1)/N.

    python evaluate.py --runs runs/dpo_beta0.1 runs/ppo_kl6 --ref runs/sft --out runs/frontier.jsonl
    python evaluate.py plot runs/frontier.jsonl          # redraw frontier.png from the JSONL alone
"""

import json
import math
import os
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from data import PROTOCOL, collate, load_prefixes, load_tokenizer
from model import GPT, gpt_folder, sample_completions, token_logprobs
from reward import load_ground_truth, load_reward_model

from plumbing.flags import arg, check_fields
from plumbing.runs import run_main
from plumbing.speed import speed_up
from plumbing.utils import append_jsonl, autocast, get_device, list_checkpoints, read_jsonl
from report.figure import plot_frontier, plot_title

# ----------------------------------------------------------------------------- the measures


def token_kl(logits, ref_logits, mask, temperature=1.0):
    """Exact per-token KL(pi || pi_ref) over the whole vocabulary at each position, (B, T-1),
    aligned with model.token_logprobs (position t scores the distribution that produced token
    t + 1); 0 where mask[:, 1:] is False. Both logits (B, T, V) at the sampling temperature."""
    lp = torch.log_softmax(logits[:, :-1].float() / temperature, -1)
    ref_lp = torch.log_softmax(ref_logits[:, :-1].float() / temperature, -1)
    kl = (lp.exp() * (lp - ref_lp)).sum(-1)
    return kl * mask[:, 1:]


def kl_estimates(logps, ref_logps, mask):
    """Monte-Carlo per-token KL estimates from the sampled tokens (Schulman's k1 and k3):
    k1 = log pi - log pi_ref (unbiased, high variance, can be negative), k3 = (r - 1) - log r
    with r = pi_ref / pi (unbiased, never negative). Inputs (B, T-1), mask (B, T-1)."""
    log_r = ref_logps - logps
    return -log_r * mask, (log_r.exp() - 1 - log_r) * mask


def best_of_n_kl_bound(n: int) -> float:
    """KL(best-of-N || base) <= log N - (N - 1) / N (Stiennon et al. 2020): the exact value when
    no single completion carries noticeable probability, an upper bound otherwise (Beirami et al.
    2024)."""
    return math.log(n) - (n - 1) / n


@torch.no_grad()
def sample_and_measure(policy, ref, prefixes, tok, micro_batch, seed, device):
    """Completions for `prefixes` and each one's sequence KL (exact, k1, k3) against ref."""
    g = torch.Generator(device=device).manual_seed(seed)
    texts_ids, kl, k1, k3 = [], [], [], []
    for i in range(0, len(prefixes), micro_batch):
        prompts = prefixes[i: i + micro_batch]
        comps = sample_completions(policy, prompts, micro_batch, g, tok.eos_id,
                                   **PROTOCOL.sampling())
        x, m = collate(prompts, comps, tok.eos_id)
        x, m = x.to(device), m.to(device)
        with autocast(device):
            logits, ref_logits = policy(x), ref(x)
        t = PROTOCOL.temperature
        lp = token_logprobs(logits, x, m, reduction="none", temperature=t)
        ref_lp = token_logprobs(ref_logits, x, m, reduction="none", temperature=t)
        e1, e3 = kl_estimates(lp, ref_lp, m[:, 1:])
        kl.append(token_kl(logits, ref_logits, m, t).sum(-1).cpu())
        k1.append(e1.sum(-1).cpu())
        k3.append(e3.sum(-1).cpu())
        texts_ids += comps
    return texts_ids, torch.cat(kl), torch.cat(k1), torch.cat(k3)


def summarize(rewards: torch.Tensor, kl, k1, k3) -> dict:
    n = len(rewards)
    se = rewards.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return dict(reward=rewards.mean().item(), reward_se=se, kl=kl.mean().item(),
                kl_k1=k1.mean().item(), kl_k3=k3.mean().item(), n=n)


# ----------------------------------------------------------------------------- runs


def describe_run(run_dir: str) -> tuple[str, str, float | None]:
    """(method, hyper-parameter name, value) of a run folder, from its run_config.json."""
    with open(os.path.join(run_dir, "run_config.json")) as f:
        c = json.load(f)
    if "refresh_every" in c:  # online/dpo.py
        return ("Online DPO" if c["reward"] == "rm" else "Online DPO-GT"), "beta", c["beta"]
    if "loss" in c:
        if c["loss"].startswith("unlikelihood"):
            return "Unlikelihood", "alpha", c["alpha"]
        if c["loss"] == "dpo" and c.get("label_smoothing"):  # conservative DPO
            return "cDPO", "beta", c["beta"]
        return ({"dpo": "DPO", "ipo": "IPO", "hinge": "SLiC", "simpo": "SimPO"}[c["loss"]], "beta",
                c["beta"])
    if "reward" in c:
        return ("PPO" if c["reward"] == "rm" else "PPO-GT"), "target_kl", c["target_kl"]
    if c.get("pairs"):
        return "Preferred-FT", "seed", c["seed"]
    return "SFT", "", None


@dataclass
class EvalConfig:
    runs: tuple[str, ...] = arg((), "run folders (every checkpoint) or checkpoint folders", "path")
    ref: str = arg("runs/sft", "the reference policy (the SFT checkpoint)")
    ground_truth: str = arg("siebert/sentiment-roberta-large-english",
                            "see reward.load_ground_truth")
    dataset: str = arg("stanfordnlp/imdb", "test prefixes come from its test split")
    out: str = arg("runs/frontier.jsonl", "results, appended; the plot goes beside it (.png)")
    n_prefixes: int = arg(PROTOCOL.n_test_prefixes, "held-out test prefixes", "> 0")
    seed: int = arg(PROTOCOL.test_seed, "which prefixes, and the sampling", ">= 0")
    every: int = arg(1,
                     "evaluate every k-th checkpoint of a run (the last is always included)", "> 0")
    include_ref: bool = arg(True, "also evaluate the reference itself (KL 0)")
    best_of: tuple[int, ...] = arg((), "N values for the best-of-N baseline (needs --rm)", ">= 0")
    rm: str | None = arg(None, "learned reward model run folder, for best-of-N")
    micro_batch: int = arg(16, "sequences per forward", "> 0")
    score_batch: int = arg(64, "texts per ground-truth batch", "> 0")
    plot: bool = arg(True, "redraw the plot (<out>.png) after evaluating")
    device: str = arg("auto", "cuda > mps > cpu", "device")


def checkpoints_of(path: str, every: int) -> list[tuple[int, str]]:
    if os.path.isfile(os.path.join(path, "config.json")):
        return [(0, path)]
    ckpts = list_checkpoints(path)
    return [c for i, c in enumerate(ckpts) if i % every == every - 1 or i == len(ckpts) - 1]


def load_shared(cfg: EvalConfig) -> dict:
    """What every evaluation of cfg's sweep shares, on the host: the tokenizer, the test prefixes,
    the reference and the ground truth."""
    ref_path = gpt_folder(cfg.ref)
    tok = load_tokenizer(ref_path)
    return dict(key=shared_key(cfg), tok=tok,
                prefixes=load_prefixes(cfg.dataset, "test", cfg.n_prefixes, cfg.seed, tok),
                ref=speed_up(GPT.from_pretrained(ref_path)).eval(),
                scorer=load_ground_truth(cfg.ground_truth))


def shared_key(cfg: EvalConfig) -> tuple:
    return cfg.ref, cfg.ground_truth, cfg.dataset, cfg.n_prefixes, cfg.seed


def main(cfg: EvalConfig, shared: dict | None = None):
    """Evaluate the checkpoints of cfg.runs that have no row in cfg.out yet.

    shared: a dict the caller keeps across calls (frontier.py: one per sweep run, whose
    checkpoints are evaluated as they are written). It is filled by load_shared at the first
    call with work to do, and read by the calls after, so the reference, the ground truth and
    the test prefixes are loaded once per run rather than once per checkpoint; between calls its
    models wait on the host, leaving the GPU to the training run."""
    check_fields(cfg)  # ranges, and every --runs folder must exist
    if cfg.best_of and cfg.rm is None:
        raise ValueError("--best_of needs --rm (the learned reward model picks the best)")
    if any(n < 1 for n in cfg.best_of):
        raise ValueError(f"--best_of takes N >= 1 for each best-of-N, not {cfg.best_of}")
    device = get_device(cfg.device)
    ref_path = gpt_folder(cfg.ref)
    where = os.path.dirname(os.path.abspath(cfg.out))
    rel = lambda p: os.path.relpath(os.path.abspath(p), where)  # results move with their runs
    done = {(r["checkpoint"], r.get("best_of")) for r in read_jsonl(cfg.out)}
    todo = [("SFT", "", None, 0, ref_path)] if cfg.include_ref else []
    for run in cfg.runs:
        if os.path.isfile(os.path.join(run, "run_config.json")):
            method, pname, pval = describe_run(run)
        else:
            method, pname, pval = os.path.basename(os.path.normpath(run)), "", None
        ckpts = checkpoints_of(run, cfg.every)
        if not ckpts:
            raise FileNotFoundError(f"--runs {run} holds no checkpoint (step_*/ or config.json)")
        todo += [(method, pname, pval, s, p) for s, p in ckpts]
    todo = [t for t in todo if (rel(t[4]), None) not in done]
    todo_bon = [n for n in cfg.best_of if (rel(ref_path), n) not in done]
    if not todo and not todo_bon:
        if cfg.plot:
            plot_frontier(cfg.out, title=plot_title(cfg.dataset))
        return read_jsonl(cfg.out)
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    keep = shared is not None
    shared = shared if keep else {}
    if not shared:
        shared.update(load_shared(cfg))
    if shared["key"] != shared_key(cfg):
        raise ValueError(f"the shared models were loaded for {shared['key']}, not for this "
                         f"evaluation's {shared_key(cfg)}")
    tok, prefixes = shared["tok"], shared["prefixes"]
    ref, scorer = shared["ref"].to(device), shared["scorer"].to(device)
    for method, pname, pval, step, path in tqdm(todo, desc="evaluate", unit="ckpt"):
        policy = ref if path == ref_path else speed_up(GPT.from_pretrained(path)).to(device).eval()
        comps, kl, k1, k3 = sample_and_measure(policy, ref, prefixes, tok, cfg.micro_batch,
                                               cfg.seed, device)
        texts = [tok.decode(p + c) for p, c in zip(prefixes, comps)]
        rewards = scorer(texts, batch_size=cfg.score_batch)
        append_jsonl(cfg.out, dict(method=method, param=pname, value=pval,
                                   seed=_run_seed(path), step=step, checkpoint=rel(path),
                                   **summarize(rewards, kl, k1, k3)))
    if todo_bon:
        rm = load_reward_model(cfg.rm, device=device)
        for n in todo_bon:
            append_jsonl(cfg.out, best_of_n(ref, rm, scorer, prefixes, tok, n, cfg, device,
                                            rel(ref_path)))
    if keep:  # back to the host until the next call
        ref.to("cpu"), scorer.to("cpu")
    if cfg.plot:
        plot_frontier(cfg.out, title=plot_title(cfg.dataset))
    return read_jsonl(cfg.out)


def _run_seed(path: str):
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "run_config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            return json.load(f).get("seed")
    return None


@torch.no_grad()
def best_of_n(sft, rm, scorer, prefixes, tok, n, cfg, device, checkpoint):
    """Sample n completions per prefix from the SFT policy, keep the one the learned RM scores
    highest, report its ground-truth reward, at the KL bound log n - (n-1)/n. The RM scores the
    sampled token ids (it was trained on ids); the ground truth reads the text."""
    rm.check_tokenizer(tok, "the SFT policy")
    g = torch.Generator(device=device).manual_seed(cfg.seed + n)
    best, per_batch = [], max(1, cfg.micro_batch // n)  # prefixes per batch of n samples each
    for i in tqdm(range(0, len(prefixes), per_batch), desc=f"best-of-{n}", mininterval=1.0):
        chunk = prefixes[i: i + per_batch]
        prompts = [p for p in chunk for _ in range(n)]
        comps = sample_completions(sft, prompts, len(prompts), g, tok.eos_id,
                                   **PROTOCOL.sampling())
        seqs = [p + c for p, c in zip(prompts, comps)]
        rm_scores = rm.score_ids(seqs, batch_size=cfg.score_batch, progress=False)
        rm_scores = rm_scores.view(len(chunk), n)
        texts = [tok.decode(s) for s in seqs]
        best += [texts[j * n + int(rm_scores[j].argmax())] for j in range(len(chunk))]
    rewards = scorer(best, batch_size=cfg.score_batch)
    bound = torch.full((len(best),), best_of_n_kl_bound(n))
    return dict(method="Best-of-N", param="N", value=n, seed=None, step=0,
                checkpoint=checkpoint, best_of=n, kl_is_bound=True,
                **summarize(rewards, bound, bound, bound))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "plot":
        import argparse

        ap = argparse.ArgumentParser(prog="evaluate.py plot", description="Redraw the frontier "
                                     "plot (<results>.png beside it) from a results file alone.")
        ap.add_argument("results", help="a frontier.jsonl written by evaluate.py")
        ap.add_argument("--title", default=None, help="the plot's title (default: Reward vs KL)")
        ap.add_argument("--xmax", type=float, default=20.0,
                        help="the main panel's KL axis ends here (default: 20, the paper's)")
        ap.add_argument("--zoom", type=float, default=5.0,
                        help="a second panel of KL 0..ZOOM (default: 5); 0: none")
        args = ap.parse_args(sys.argv[2:])
        try:
            print(plot_frontier(args.results, title=args.title, xmax=args.xmax,
                                zoom=args.zoom or None))
        except (ValueError, OSError) as e:
            sys.exit(f"error: {e}")
    else:
        run_main(main, EvalConfig, epilog="python evaluate.py plot RESULTS.jsonl redraws the plot "
                 "from a results file alone (--help: its axes); python -m report.sweep SWEEP "
                 "prints what each run learned.")
