"""The frontier's figure and its KL-budget table, drawn from a results file alone: what
evaluate.py and frontier.py print and save at the end (a student may skip how).

    python evaluate.py plot runs/tiny/frontier.jsonl --xmax 20 --zoom 5
"""

import os

from plumbing.utils import atomic_write, mean_stderr, read_jsonl

STYLE = {  # method: (colour, marker), close to the paper's Figure 2
    "DPO": ("tab:red", "o"), "IPO": ("tab:pink", "o"), "SLiC": ("tab:brown", "o"),
    "cDPO": ("tab:olive", "o"), "SimPO": ("tab:gray", "P"),
    "Online DPO": ("darkred", "h"), "Online DPO-GT": ("teal", "h"),
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


def optimum_label(opt: list[dict]) -> str:
    """The optimum line's legend entry: how it was estimated (theory/optimum.py's estimator field;
    rows without one are the reference's) and, for the mixture, how far it is trusted."""
    if opt[0].get("estimator", "reference") == "mixture":
        reach = max((r["kl"] for r in opt if r.get("trusted", True)), default=0.0)
        return f"optimum π* (mixture IS, trusted to {reach:.1f} nats)"
    return f"optimum π* (the limit; estimated, M = {opt[0]['M']})"


def frontier_figure(rows: list[dict], opt: list[dict], title: str | None = None,
                    xmax: float = 20.0, zoom: float | None = 5.0):
    """The figure of plot_frontier: a main panel of KL 0..xmax (the paper's Figure 2 axis: 0-20
    nats) and, with zoom, a second panel of KL 0..zoom, where the methods differ. Points past a
    panel's right edge are drawn on it as triangles (▶) and counted in its title and in their
    method's legend entry. The legend sits beside the panels, so it hides no point, with every
    method in full colour. Above the optimum line (grey) no policy can be: it is the limit."""
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

    if not xmax > 0:
        raise ValueError(f"the KL axis must end above 0, not at {xmax}")
    if zoom is not None and not 0 < zoom < xmax:
        raise ValueError(f"the zoomed panel's KL ({zoom}) must lie in (0, {xmax})")
    limits = [xmax] + ([zoom] if zoom else [])
    legend_width = 3.6  # inches beside the panels, for the legend's longest label
    fig = Figure(figsize=(6 * len(limits) + legend_width, 4.8))
    axes = fig.subplots(1, len(limits), squeeze=False)[0]
    methods = sorted({r["method"] for r in rows},
                     key=lambda m: list(STYLE).index(m) if m in STYLE else 99)
    lo = min(0.4, min(r["reward"] for r in rows) - 0.02)
    opt = sorted(opt, key=lambda r: r["kl"])
    trusted = [r for r in opt if r.get("trusted", True)]
    past = trusted[-1:] + [r for r in opt if not r.get("trusted", True)]
    far = beyond(rows, xmax)
    for ax, edge in zip(axes, limits):
        if len(opt) > 1:  # the limit: nothing lies above the optimum's (trusted) curve
            ax.fill_between([r["kl"] for r in trusted], [r["reward"] for r in trusted], 1.0,
                            color="0.85", lw=0, zorder=0, label="above the optimum: unreachable")
            ax.plot([r["kl"] for r in trusted], [r["reward"] for r in trusted], color="black",
                    lw=2.0, zorder=5, label=optimum_label(opt))
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
    handles = getattr(legend, "legend_handles", None)
    if handles is None:
        handles = legend.legendHandles  # matplotlib < 3.7
    for handle in handles:  # full colour in the legend, whatever the points' alpha
        handle.set_alpha(1.0)
    fig.tight_layout(rect=(0, 0, 1 - legend_width / fig.get_figwidth(), 1))
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
