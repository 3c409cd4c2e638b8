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
from plumbing.utils import (
    append_jsonl,
    atomic_write,
    autocast,
    get_device,
    list_checkpoints,
    mean_stderr,
    read_jsonl,
)

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


def main(cfg: EvalConfig):
    check_fields(cfg)  # ranges, and every --runs folder must exist
    if cfg.best_of and cfg.rm is None:
        raise ValueError("--best_of needs --rm (the learned reward model picks the best)")
    if any(n < 1 for n in cfg.best_of):
        raise ValueError(f"--best_of takes N >= 1 for each best-of-N, not {cfg.best_of}")
    device = get_device(cfg.device)
    ref_path = gpt_folder(cfg.ref)
    tok = load_tokenizer(ref_path)
    prefixes = load_prefixes(cfg.dataset, "test", cfg.n_prefixes, cfg.seed, tok)
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
    ref = speed_up(GPT.from_pretrained(ref_path)).to(device).eval()
    scorer = load_ground_truth(cfg.ground_truth, device=device)
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


# ----------------------------------------------------------------------------- the plot

STYLE = {  # method: (colour, marker), close to the paper's Figure 2
    "DPO": ("tab:red", "o"), "IPO": ("tab:pink", "o"), "SLiC": ("tab:brown", "o"),
    "cDPO": ("tab:olive", "o"), "SimPO": ("tab:gray", "P"),
    "Unlikelihood": ("tab:orange", "s"), "PPO": ("tab:blue", "^"),
    "PPO-GT": ("tab:cyan", "v"), "Preferred-FT": ("tab:green", "D"),
    "Best-of-N": ("tab:purple", "*"), "SFT": ("black", "X"),
}


def envelope(rows: list[dict], budget: float) -> float | None:
    """The best reward among rows with KL <= budget (None if none): a method's frontier read at
    one KL budget, over every setting of its sweep."""
    return max((r["reward"] for r in rows if r["kl"] <= budget), default=None)


def seed_envelopes(rows: list[dict], budgets) -> dict:
    """{method: {budget: (mean, standard error, seeds)}} of each method's envelope over the seeds
    of its runs: the envelope is taken per seed (every setting of the sweep, one seed), then
    averaged over the seeds that reach the budget at all (their count is the third entry; the
    standard error is None for one seed)."""
    out = {}
    for method in {r["method"] for r in rows} - {"SFT"}:
        mine = [r for r in rows if r["method"] == method]
        seeds = sorted({r.get("seed") for r in mine}, key=str)
        out[method] = {}
        for b in budgets:
            vals = [v for s in seeds
                    if (v := envelope([r for r in mine if r.get("seed") == s], b)) is not None]
            out[method][b] = (*mean_stderr(vals), len(vals))
    return out


def print_budget_table(rows: list[dict], budgets=(1, 2, 3, 5)):
    """The best reward of each method within each KL budget (seed_envelopes): mean ± standard
    error over the seeds that reach the budget, their count in brackets; the SFT row is its
    reference point."""
    table = seed_envelopes(rows, budgets)
    methods = sorted(table, key=lambda m: list(STYLE).index(m) if m in STYLE else 99)
    print("best reward within a KL budget (mean ± SE over seeds, [seeds]):")
    print(f"  {'method':<14}" + "".join(f"{f'KL <= {b:g}':>22}" for b in budgets))
    for m in methods:
        cells = [("—" if mean is None else f"{mean:.3f}" + (f" ± {se:.3f}" if se else "")
                  + f" [{n}]") for mean, se, n in (table[m][b] for b in budgets)]
        print(f"  {m:<14}" + "".join(f"{c:>22}" for c in cells))
    sft = [r["reward"] for r in rows if r["method"] == "SFT"]
    if sft:
        print(f"  {'SFT':<14}{sft[0]:>22.3f}  (KL 0)")


def beyond(rows: list[dict], xmax: float) -> dict:
    """{method: how many of its points lie past KL xmax}, for the methods that have any: drawn at
    the axis' right edge rather than left out or allowed to stretch the axis."""
    out = {}
    for r in rows:
        if r["kl"] > xmax:
            out[r["method"]] = out.get(r["method"], 0) + 1
    return out


def frontier_figure(rows: list[dict], opt: list[dict], title: str | None = None,
                    xmax: float = 20.0, zoom: float | None = 5.0):
    """The figure of plot_frontier: a main panel of KL 0..xmax (the paper's Figure 2 axis: 0-20
    nats) and, with zoom, a second panel of KL 0..zoom, where the methods differ. Points past a
    panel's right edge are drawn on it as triangles (▶) and counted in its title and in their
    method's legend entry. The legend sits beside the panels, so it hides no point, with every
    method in full colour. Above the optimum line (grey) no policy can be: it is the limit."""
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

    if zoom is not None and not 0 < zoom < xmax:
        raise ValueError(f"the zoomed panel's KL ({zoom}) must lie in (0, {xmax})")
    if not xmax > 0:
        raise ValueError(f"the KL axis must end above 0, not at {xmax}")
    limits = [xmax] + ([zoom] if zoom else [])
    fig = Figure(figsize=(6 * len(limits) + 2.6, 4.8))
    axes = fig.subplots(1, len(limits), squeeze=False)[0]
    methods = sorted({r["method"] for r in rows},
                     key=lambda m: list(STYLE).index(m) if m in STYLE else 99)
    lo = min(0.4, min(r["reward"] for r in rows) - 0.02)
    opt = sorted(opt, key=lambda r: r["kl"])
    trusted = [r for r in opt if r.get("trusted", True)]
    past = trusted[-1:] + [r for r in opt if not r.get("trusted", True)]
    far = beyond(rows, xmax)
    for ax, edge in zip(axes, limits):
        if opt:  # the limit: nothing lies above the optimum's (trusted) curve
            ax.fill_between([r["kl"] for r in trusted], [r["reward"] for r in trusted], 1.0,
                            color="0.85", lw=0, zorder=0, label="above the optimum: unreachable")
            ax.plot([r["kl"] for r in trusted], [r["reward"] for r in trusted], color="black",
                    lw=2.0, zorder=5, label=f"optimum π* (the limit; estimated, M = {opt[0]['M']})")
            ax.plot([r["kl"] for r in past], [r["reward"] for r in past], color="black", lw=1.2,
                    ls=":", zorder=5, label="optimum, past its trusted KL")
        for method in methods:
            pts = [r for r in rows if r["method"] == method]
            inside = [r for r in pts if r["kl"] <= edge]
            out = [r for r in pts if r["kl"] > edge]
            colour, marker = STYLE.get(method, ("gray", "."))
            label = method + (" (KL at its bound)" if method == "Best-of-N" else "")
            if far.get(method):
                label += f" ({far[method]} beyond {xmax:g} nats)"
            several = method not in ("SFT", "Best-of-N") and len({r.get("seed") for r in pts}) > 1
            best_of = method == "Best-of-N"
            ax.scatter([r["kl"] for r in inside], [r["reward"] for r in inside], marker=marker,
                       s=90 if best_of else 28, alpha=0.35 if several else 0.9, label=label,
                       edgecolors=colour, facecolors="none" if best_of else colour,
                       linewidths=1.6 if best_of else 1.0, zorder=4 if best_of else 3)
            if out:  # at the edge, so that no run disappears from the plot
                ax.scatter([edge] * len(out), [r["reward"] for r in out], marker=">", s=36,
                           color=colour, alpha=0.8, clip_on=False, zorder=4)
            if several:  # the envelope's mean over seeds, ± one standard error as a band
                grid = sorted({r["kl"] for r in pts})
                env = seed_envelopes(pts, grid)[method]
                xs = [b for b in grid if env[b][2] == len({r.get("seed") for r in pts})]
                mean = [env[b][0] for b in xs]
                se = [env[b][1] for b in xs]
                ax.step(xs, mean, where="post", color=colour, lw=1.4)
                ax.fill_between(xs, [m - e for m, e in zip(mean, se)],
                                [m + e for m, e in zip(mean, se)], step="post", color=colour,
                                alpha=0.2, lw=0)
        ax.set_ylim(lo, 1.0)
        ax.set_xlim(0, edge)
        ax.set_xlabel("KL(π ‖ π_ref), nats per completion")
        ax.grid(alpha=0.3)
        n_out = sum(r["kl"] > edge for r in rows)
        what = f"KL ≤ {edge:g}" + (f"; {n_out} points beyond, at the edge (▶)" if n_out else "")
        ax.set_title(what if ax is not axes[0] else f"{title or 'Reward vs KL'}\n{what}",
                     fontsize=10)
    axes[0].set_ylabel("reward: ground-truth P(positive)")
    legend = fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="center right")
    handles = getattr(legend, "legend_handles", None) or legend.legendHandles  # matplotlib < 3.7
    for handle in handles:  # full colour in the legend, whatever the points' alpha
        handle.set_alpha(1.0)
    fig.tight_layout(rect=(0, 0, 1 - 2.6 / fig.get_figwidth(), 1))
    return fig


def plot_frontier(jsonl: str, png: str | None = None, title: str | None = None,
                  optimum: str | None = None, xmax: float = 20.0,
                  zoom: float | None = 5.0) -> str:
    """Reward (y) against sequence KL (x) for every evaluated checkpoint, one colour and marker
    per method; best-of-N sits at its KL bound (hollow). A method run with several seeds also
    gets its envelope's mean over seeds as a step line, ± one standard error as a band (from the
    KL where every seed has a point). The KL-regularised optimum (theory/optimum.py's
    optimum.jsonl beside the results, if there) is the black line: solid where its estimate is
    trusted, dotted beyond. Panels: KL 0..xmax and 0..zoom (frontier_figure). Returns the PNG's
    path."""
    rows = read_jsonl(jsonl)
    if not rows:
        raise ValueError(f"{jsonl} holds no results to plot")
    png = png or os.path.splitext(jsonl)[0] + ".png"
    optimum = optimum or os.path.join(os.path.dirname(os.path.abspath(jsonl)), "optimum.jsonl")
    fig = frontier_figure(rows, read_jsonl(optimum), title, xmax, zoom)
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return png


def plot_title(dataset: str) -> str:
    return ("Synthetic reviews (tiny preset): reward vs KL" if dataset == "synthetic"
            else "IMDb sentiment generation: reward vs KL")


# ----------------------------------------------------------------------------- the sweep's report


def report(sweep_dir: str) -> list[dict]:
    """What each run of a sweep folder learned, beside where it landed: one row per run with its
    method and setting, the held-out pair accuracy of its last evaluation (the learned RM's, or
    the share of held-out pairs whose implicit rewards DPO and Unlikelihood order as the ground
    truth did: pairs.py labelled each pair by the ground truth), the steps it took of the most it
    could (fewer: early stopping ended it), its compute (tokens through the model with a backward
    pass, summed over its steps; PPO's sampling aside), and from the results file the KL of its
    last two evaluated checkpoints (has the KL settled, and where?)."""
    results = read_jsonl(os.path.join(sweep_dir, "frontier.jsonl"))
    out = []
    for name in sorted(os.listdir(sweep_dir)):
        run = os.path.join(sweep_dir, name)
        log = os.path.join(run, "log.jsonl")
        if not os.path.isfile(os.path.join(run, "run_config.json")) or not os.path.isfile(log):
            continue
        rows = read_jsonl(log)
        with open(os.path.join(run, "run_config.json")) as f:
            cfg = json.load(f)
        evals = [r for r in rows if "loss/eval" in r or "eval/score" in r]
        acc = next((r.get("eval/rm/accuracy", r.get("eval/rewards/accuracy"))
                    for r in reversed(evals)), None)
        method, pname, pval = describe_run(run) if name not in ("rm", "gt") else (
            {"rm": "reward model", "gt": "ground truth"}[name], "", None)
        mine = sorted((r for r in results if r["checkpoint"].split("/")[0] == name
                       and r.get("best_of") is None and r["method"] != "SFT"),
                      key=lambda r: r["step"])
        if acc is None and not mine:
            continue  # pairs, the SFT model: nothing learned from preferences to report
        out.append(dict(run=name, method=method, param=pname, value=pval,
                        heldout_accuracy=acc,
                        loss_eval=evals[-1].get("loss/eval") if evals else None,
                        steps=rows[-1]["step"] if rows else 0, max_steps=cfg.get("steps"),
                        tokens=sum(r.get("tokens", 0) for r in rows) or None,
                        kl_last=mine[-1]["kl"] if mine else None,
                        kl_before=mine[-2]["kl"] if len(mine) > 1 else None))
    return out


def print_report(rows: list[dict]):
    fmt = lambda v: "" if v is None else f"{v:.3f}"
    print(f"{'run':<24} {'held-out acc':>12} {'loss/eval':>10} {'steps (of)':>11} "
          f"{'tokens':>8} {'KL (last two ckpts)':>20}")
    for r in rows:
        kl = f"{fmt(r['kl_before'])} -> {fmt(r['kl_last'])}" if r["kl_last"] is not None else ""
        steps = f"{r['steps']} ({r['max_steps']})" if r["max_steps"] else str(r["steps"])
        tokens = f"{r['tokens'] / 1e6:.2f}M" if r["tokens"] else ""
        print(f"{r['run']:<24} {fmt(r['heldout_accuracy']):>12} {fmt(r['loss_eval']):>10} "
              f"{steps:>11} {tokens:>8} {kl:>20}")


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
    elif len(sys.argv) > 1 and sys.argv[1] == "report":
        import argparse

        ap = argparse.ArgumentParser(prog="evaluate.py report", description="Print what each run "
                                     "of a sweep folder learned (held-out pair accuracy) and where "
                                     "its KL ended.")
        ap.add_argument("sweep", help="a sweep folder of frontier.py, e.g. runs/tiny")
        args = ap.parse_args(sys.argv[2:])
        if not os.path.isfile(os.path.join(args.sweep, "frontier.jsonl")):
            sys.exit(f"error: {args.sweep} holds no frontier.jsonl (not a frontier.py sweep?)")
        print_report(report(args.sweep))
    else:
        run_main(main, EvalConfig, epilog="python evaluate.py plot RESULTS.jsonl redraws the plot "
                 "from a results file alone; python evaluate.py report SWEEP prints what each run "
                 "learned (--help of each).")
