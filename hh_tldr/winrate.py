"""Win rates against a test set's references (paper §6.2, Figure 2 right and Figure 3): each policy
samples a response to held-out prompts at several temperatures, and a judge compares it with the
reference (TL;DR: the human summary; Anthropic HH: the test set's chosen response).

Two judges. `openai:<model>` (judge.py): a chat model behind any OpenAI-compatible endpoint,
asked with the paper's Appendix C.2 prompts (A/B order random per comparison; answers parsed
strictly; retries, a concurrency limit and an on-disk cache of every judgment, so a rerun asks
nothing twice).
`rm:<folder>`: a learned reward model as an offline judge, P(policy beats reference) =
sigmoid(r_policy - r_reference), whose mean is an *expected* win rate.

    python -m hh_tldr.winrate --policies sft=runs/sft dpo=runs/dpo --test tldr_test.jsonl \
        --judge openai:gpt-4-0314 --out_dir runs/winrate      # OPENAI_API_KEY, OPENAI_BASE_URL
    python -m hh_tldr.winrate --policies sft=runs/sft dpo=runs/dpo --test hh_test_pairs.jsonl \
        --judge rm:runs/rm --out_dir runs/winrate_rm
    python -m hh_tldr.winrate plot runs/winrate/winrate.jsonl   # redraw winrate.png from the JSONL

The test file is a pairs JSONL (prompt_ids, chosen_ids, prompt, chosen, ...; reference = chosen)
or a completions JSONL (prompt_ids, completion_ids, prompt, completion; reference = completion).
The out_dir receives winrate.jsonl (one row per policy x temperature: win_rate, stderr, n, wins,
ties, losses, failures), comparisons.jsonl (one row per comparison; index = the test file's line),
winrate.png, and the two resume files samples.jsonl and judge_cache.jsonl.
"""

import json
import os
import random
import sys
from dataclasses import asdict, dataclass

import torch

from data import load_tokenizer
from model import GPT, gpt_folder, sample_completions
from reward import RewardModel, reward_folder, rm_tokens

from hh_tldr.judge import PROMPTS, openai_judge
from plumbing.flags import arg, check_fields
from plumbing.runs import run_main
from plumbing.speed import speed_up
from plumbing.utils import (
    append_jsonl,
    atomic_write,
    atomic_write_json,
    file_stamp,
    get_device,
    mean_stderr,
    read_jsonl,
    seed_for,
    write_jsonl,
)

# ----------------------------------------------------------------------------- the reward judge


def rm_sequence(prompt_ids, response_ids, eos_id, max_len):
    """What the reward model reads of prompt + response: rm_tokens' tokens (no final EOS), keeping
    the last max_len so that a long prompt never cuts the response off."""
    seq = rm_tokens(list(prompt_ids) + list(response_ids), eos_id, len(prompt_ids) +
                    len(response_ids) + 1)
    return seq[-max_len:]


@torch.no_grad()
def rm_judge(comparisons, rm, eos_id, batch_size) -> None:
    """P(policy beats reference) = sigmoid(r(x, y_policy) - r(x, y_reference)) for each comparison
    (the Bradley-Terry model the RM was trained under, Eq. 1); its mean is an expected win rate."""
    T = rm.gpt.config.block_size
    todo = [c for c in comparisons if c["outcome"] != "tie"]
    for i in range(0, len(todo), batch_size):
        b = todo[i: i + batch_size]
        seqs = [rm_sequence(c["prompt_ids"], c[side], eos_id, T)
                for side in ("response_ids", "reference_ids") for c in b]
        r = rm.score(seqs, eos_id).double().cpu()
        r_policy, r_reference = r[: len(b)], r[len(b):]
        p_win = torch.sigmoid(r_policy - r_reference)  # no overflow for a large gap
        for c, r_pol, r_ref, p in zip(b, r_policy.tolist(), r_reference.tolist(), p_win.tolist()):
            c["r_policy"], c["r_reference"], c["p_win"] = r_pol, r_ref, p
            c["outcome"] = "win" if r_pol > r_ref else "loss" if r_pol < r_ref else "tie"


def summarize(comparisons) -> dict:
    """Win rate = mean of p_win over the judged comparisons (1 win, 0 loss, 0.5 tie for the
    openai judge; sigmoid of the reward difference for the rm judge), failures left out; stderr =
    sample standard deviation / sqrt(n)."""
    p = [c["p_win"] for c in comparisons if c["outcome"] != "failure"]
    mean, se = mean_stderr(p)
    count = lambda o: sum(c["outcome"] == o for c in comparisons)
    return dict(win_rate=mean, stderr=se, n=len(p),
                wins=count("win"), ties=count("tie"), losses=count("loss"),
                failures=count("failure"))


# ----------------------------------------------------------------------------- the test set


def load_test(path: str):
    """(kind, rows) of a test file: kind "pairs" (reference = chosen) or "completions"
    (reference = completion); rows (prompt_ids, prompt, reference_ids, reference, line), one per
    distinct prompt (a pairs file's first pair of each prompt)."""
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path} holds no rows (or does not exist)")
    keys = {"pairs": ("prompt_ids", "chosen_ids", "prompt", "chosen"),
            "completions": ("prompt_ids", "completion_ids", "prompt", "completion")}
    kind = next((k for k, ks in keys.items() if all(x in rows[0] for x in ks)), None)
    if kind is None:
        raise ValueError(f"{path}: rows need prompt_ids, chosen_ids, prompt, chosen (a pairs "
                         f"file) or prompt_ids, completion_ids, prompt, completion; the first "
                         f"has {', '.join(rows[0])}")
    out, seen = [], set()
    for line, r in enumerate(rows, 1):
        p, ref_ids, p_text, ref = (r.get(k) for k in keys[kind])
        if not (isinstance(p, list) and p and isinstance(ref_ids, list) and
                isinstance(p_text, str) and isinstance(ref, str)):
            raise ValueError(f"{path}:{line}: needs a non-empty prompt_ids list, a reference id "
                             f"list and two texts ({', '.join(keys[kind])})")
        if tuple(p) not in seen:
            seen.add(tuple(p))
            out.append((p, p_text, ref_ids, ref, line))
    return kind, out


def data_name(path: str) -> str:
    """The test data's name, for the plot: the dataset and split preferences.py converted the file
    from (its <file>.config.json), else the file's name."""
    try:
        with open(path + ".config.json") as f:
            c = json.load(f)
        return str(c["dataset"]) + (f" ({c['split']})" if c.get("split") else "")
    except (OSError, ValueError, KeyError, TypeError):
        return os.path.basename(path)


def detect_task(kind: str, rows) -> str:
    """--task auto: summarization for TL;DR (its reference summaries, or comparisons whose prompts
    end with preferences.py's "TL;DR:" cue), else dialogue."""
    tldr = kind == "completions" or all(p.rstrip().endswith("TL;DR:") for _, p, *_ in rows)
    return "summarization" if tldr else "dialogue"


def choose_prompts(rows, n: int, seed: int):
    """A seeded choice of n distinct prompts (all of them if n <= 0 or n >= len), in file order."""
    if n <= 0 or n >= len(rows):
        return rows
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), n))]


# ----------------------------------------------------------------------------- sampling


def parse_policies(specs) -> list[tuple[str, str]]:
    """NAME=FOLDER (or a bare folder, named after it) -> [(name, folder)]."""
    out = []
    for s in specs:
        name, path = s.split("=", 1) if "=" in s else (os.path.basename(os.path.normpath(s)), s)
        if not name or not path:
            raise ValueError(f"--policies takes NAME=FOLDER, not {s!r}")
        if name in [n for n, _ in out]:
            raise ValueError(f"policy name {name!r} given twice")
        out.append((name, path))
    if not out:
        raise ValueError("no policies: pass --policies NAME=FOLDER ...")
    return out


@torch.no_grad()
def sample_block(cfg, model, tok, prompts, temperature, t_index, best_of=None):
    """Response ids for each prompt at this temperature (0 = greedy), prompts cut from the left to
    fit the context window. best_of = (n, rm, rm_eos): sample n each, keep the RM's favourite."""
    device = str(model.transformer.wte.weight.device)
    keep = model.config.block_size - cfg.max_new_tokens
    prompts = [p[-keep:] for p in prompts]
    g = torch.Generator(device=device).manual_seed(seed_for(cfg.seed, t_index))
    sampling = dict(max_new_tokens=cfg.max_new_tokens, temperature=temperature)
    if best_of is None:
        return sample_completions(model, prompts, cfg.batch_size, g, tok.eos_id, **sampling)
    n, rm, rm_eos = best_of  # each prompt n times in a row, batch_size rows per generate call
    comps = sample_completions(model, [p for p in prompts for _ in range(n)], cfg.batch_size, g,
                               tok.eos_id, **sampling)
    T = rm.gpt.config.block_size
    seqs = [rm_sequence(prompts[i // n], c, rm_eos, T) for i, c in enumerate(comps)]
    r = torch.cat([rm.score(seqs[i: i + cfg.batch_size], rm_eos).float().cpu()
                   for i in range(0, len(seqs), cfg.batch_size)]).view(len(prompts), n)
    return [comps[i * n + int(r[i].argmax())] for i in range(len(prompts))]


# ----------------------------------------------------------------------------- main


@dataclass
class WinRateConfig:
    policies: tuple[str, ...] = arg((),
                                    "NAME=FOLDER each: a checkpoint or run folder (its last step)")
    test: str = arg("",
                    "pairs JSONL (reference = chosen) or completions JSONL (= completion)", "file")
    judge: str = arg("rm:runs/rm",
                     "openai:<model> (OPENAI_BASE_URL, OPENAI_API_KEY) or rm:<folder>")
    task: str = arg("auto", "summarization | summarization_simple | dialogue | auto (by the file)")
    out_dir: str = arg("runs/winrate",
                       "winrate.jsonl, comparisons.jsonl, winrate.png, resume files")
    n: int = arg(256,
                 "held-out prompts, a seeded choice of the test file's distinct prompts (0: all)")
    seed: int = arg(0, "which prompts, the sampling, and the A/B order", ">= 0")
    temperatures: tuple[float, ...] = arg((0.0, 0.25, 0.5, 0.75, 1.0),
                                          "sampling (0: greedy)", ">= 0")
    max_new_tokens: int = arg(128, "response length cap; a response also ends at EOS", "> 0")
    batch_size: int = arg(16, "sequences per generate / reward-model forward", "> 0")
    best_of: int = arg(0, "N > 0: add Best-of-N, the --best_of_rm favourite of N samples", ">= 0")
    best_of_policy: str = arg("", "Best-of-N samples this one of --policies (default: the first)")
    best_of_rm: str = arg("runs/rm", "the reward model that picks the best of N")
    concurrency: int = arg(8, "judge requests in flight at once", "> 0")
    retries: int = arg(6, "retries of a request after 429, 5xx or a connection error")
    retry_delay: float = arg(1.0, "seconds before the first retry; doubles each time")
    timeout: float = arg(120.0, "seconds per request")
    judge_temperature: float | None = arg(0.0, "sent with each request (None: not sent)")
    judge_max_tokens: int | None = arg(None, "max_tokens sent with each request (None: not sent)")
    cache: str | None = arg(None,
                            "judge cache JSONL, shareable (default: <out_dir>/judge_cache.jsonl)")
    device: str = arg("auto", "cuda > mps > cpu", "device")


def check_config(cfg: WinRateConfig):
    kind, _, spec = cfg.judge.partition(":")
    if kind not in ("openai", "rm") or not spec:
        raise ValueError(f"--judge must be openai:<model> or rm:<folder>, not {cfg.judge!r}")
    if kind == "openai" and not os.environ.get("OPENAI_API_KEY"):
        raise ValueError("--judge openai:... needs OPENAI_API_KEY in the environment (and "
                         "OPENAI_BASE_URL for an endpoint other than https://api.openai.com/v1; "
                         "a local server that wants no key takes any value)")
    if not cfg.test:
        raise ValueError("--test is required: a pairs or completions JSONL of the test split")
    if cfg.task not in ("auto", *PROMPTS):
        raise ValueError(f"--task must be auto or one of {', '.join(PROMPTS)}, not {cfg.task!r}")
    if not cfg.temperatures or any(t < 0 for t in cfg.temperatures):
        raise ValueError(f"--temperatures must be one or more values >= 0, not {cfg.temperatures}")
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1 or cfg.retries < 0 or cfg.best_of < 0:
        raise ValueError("--max_new_tokens and --batch_size must be positive, --retries and "
                         "--best_of not negative")
    return kind, spec


def main(cfg: WinRateConfig) -> list[dict]:
    check_fields(cfg)
    judge_kind, judge_spec = check_config(cfg)
    policies = parse_policies(cfg.policies)
    kind, rows = load_test(cfg.test)
    rows = choose_prompts(rows, cfg.n, cfg.seed)
    task = cfg.task if cfg.task != "auto" else detect_task(kind, rows)
    device = get_device(cfg.device)
    base = cfg.best_of_policy or policies[0][0]
    if cfg.best_of and base not in dict(policies):
        raise ValueError(f"--best_of_policy {base!r} is not one of --policies")
    folders = {name: gpt_folder(path) for name, path in policies}  # bad folders fail here
    rm_path = reward_folder(judge_spec) if judge_kind == "rm" else None
    pick_path = reward_folder(cfg.best_of_rm) if cfg.best_of else None
    # the rm judge (every policy) and the best-of-N picker (its policy) score the policies' ids
    readers = [(rm_path, "--judge", list(folders))] if rm_path else []
    readers += [(pick_path, "--best_of_rm", [base])] if pick_path else []
    for path, flag, names in readers:
        for name in names:
            if load_tokenizer(path).vocab != load_tokenizer(folders[name]).vocab:
                raise ValueError(f"the reward model of {flag} ({path}) and policy {name} have "
                                 f"different tokenizers: it scores token ids, so they must share "
                                 f"one")
    todo = [(name, name, None) for name, _ in policies]  # (label, policy, N of best-of-N)
    if cfg.best_of:
        todo.append((f"Best of {cfg.best_of}", base, cfg.best_of))
    os.makedirs(cfg.out_dir, exist_ok=True)
    comparisons = sample_comparisons(cfg, todo, folders, rows, pick_path, device)
    if judge_kind == "openai":
        openai_judge(comparisons, judge_spec, task, cfg,
                     cfg.cache or os.path.join(cfg.out_dir, "judge_cache.jsonl"))
    else:
        rm = RewardModel.from_pretrained(rm_path).to(device).eval()
        rm_judge(comparisons, rm, load_tokenizer(rm_path).eos_id, cfg.batch_size)
    results = []
    for label, name, _ in todo:
        for t in cfg.temperatures:
            cs = [c for c in comparisons if c["policy"] == label and c["temperature"] == t]
            results.append(dict(policy=label, checkpoint=folders[name], temperature=t,
                                judge=cfg.judge, task=task, data=data_name(cfg.test),
                                expected=judge_kind == "rm", **summarize(cs)))
    for c in comparisons:  # the JSONL keeps texts, ids of the response, and the judgment
        del c["prompt_ids"], c["reference_ids"]
    write_jsonl(os.path.join(cfg.out_dir, "comparisons.jsonl"), comparisons)
    write_jsonl(os.path.join(cfg.out_dir, "winrate.jsonl"), results)
    atomic_write_json(os.path.join(cfg.out_dir, "winrate_config.json"), asdict(cfg))
    plot_winrate(os.path.join(cfg.out_dir, "winrate.jsonl"))
    for r in results:
        se = f" ± {r['stderr']:.3f}" if r["stderr"] is not None else ""
        wr = f"{r['win_rate']:.3f}" if r["win_rate"] is not None else "n/a"
        print(f"{r['policy']:>16}  T={r['temperature']:<5}  win rate {wr}{se}  (n={r['n']}, "
              f"ties={r['ties']}, failures={r['failures']})")
    return results


def sample_comparisons(cfg, todo, folders, rows, pick_path, device) -> list[dict]:
    """One comparison per (policy, temperature, prompt): the sampled response, the reference, and
    the A/B order, drawn per comparison from the seed. Responses are appended to
    <out_dir>/samples.jsonl as each (policy, temperature) block is sampled and reused by a rerun
    with the same checkpoint, test file, seed and max_new_tokens."""
    samples_path = os.path.join(cfg.out_dir, "samples.jsonl")
    samples = {(r["block"], r["index"]): r["response_ids"] for r in read_jsonl(samples_path)}
    comparisons, picker = [], None
    for label, name, n_best in todo:
        model, tok = None, load_tokenizer(folders[name])
        for ti, t in enumerate(cfg.temperatures):
            # the weights and the test file by size and mtime too: a checkpoint retrained in
            # place or a regenerated test file samples again instead of reusing stale responses
            block = json.dumps([label, file_stamp(folders[name]), t, cfg.seed,
                                cfg.max_new_tokens, file_stamp(cfg.test), n_best,
                                n_best and file_stamp(pick_path)])
            if not all((block, line) in samples for *_, line in rows):
                if model is None:
                    model = speed_up(GPT.from_pretrained(folders[name])).to(device).eval()
                    check_ids(rows, model.config, cfg, name)
                if n_best and picker is None:
                    picker = RewardModel.from_pretrained(pick_path).to(device).eval()
                best = (n_best, picker, load_tokenizer(pick_path).eos_id) if n_best else None
                ids = sample_block(cfg, model, tok, [r[0] for r in rows], t, ti, best)
                append_jsonl(samples_path, *[dict(block=block, index=line, response_ids=c)
                                             for (*_, line), c in zip(rows, ids)])
                samples.update({(block, line): c for (*_, line), c in zip(rows, ids)})
            for p_ids, p_text, ref_ids, ref, line in rows:
                resp_ids = samples[(block, line)]
                response, reference = tok.decode(resp_ids).strip(), ref.strip()
                tie = response == reference  # identical texts: no judge is asked
                comparisons.append(dict(
                    policy=label, temperature=t, index=line,
                    policy_is=random.Random(f"{cfg.seed}/{label}/{t}/{line}").choice("AB"),
                    prompt=p_text.strip(), response=response, reference=reference,
                    prompt_ids=p_ids, response_ids=resp_ids, reference_ids=ref_ids,
                    outcome="tie" if tie else None, p_win=0.5 if tie else None))
        del model
    return comparisons


def check_ids(rows, gcfg, cfg, name):
    if gcfg.block_size <= cfg.max_new_tokens:
        raise ValueError(f"--max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in "
                         f"policy {name}'s context window of {gcfg.block_size}")
    for p, _, ref_ids, _, line in rows:
        if not all(0 <= i < gcfg.vocab_size for i in (*p, *ref_ids)):
            raise ValueError(f"{cfg.test}:{line}: a token id lies outside policy {name}'s "
                             f"vocabulary of {gcfg.vocab_size} (a test file of another tokenizer?)")


# ----------------------------------------------------------------------------- the plot


def plot_winrate(jsonl: str, png: str | None = None) -> str:
    """winrate_figure(jsonl) as <jsonl>.png (or `png`); returns the PNG's path."""
    fig = winrate_figure(jsonl)
    png = png or os.path.splitext(jsonl)[0] + ".png"
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    return png


def winrate_figure(jsonl: str):
    """Win rate (y, ± standard error) against sampling temperature (x), one line per policy, as in
    the paper's Figures 2 (right) and 3, titled with the test data's name (data_name); beside it,
    where measured, the share of correct responses by the dataset's own rule (the synthetic
    dialogues: the rows' "correct", or correct.jsonl beside the file). Each panel's y-axis spans
    the values and their errors (the win rates' also 0.5, a tie)."""
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

    rows = [r for r in read_jsonl(jsonl) if r.get("win_rate") is not None]
    if not rows:
        raise ValueError(f"{jsonl} holds no win rates to plot")
    beside = os.path.join(os.path.dirname(jsonl), "correct.jsonl")
    correct = ([dict(r, win_rate=r["correct"], stderr=r.get("correct_stderr")) for r in rows
                if r.get("correct") is not None] or
               [dict(r, win_rate=r["correct"]) for r in read_jsonl(beside)])
    fig = Figure(figsize=(11 if correct else 6, 4.5))
    axes = fig.subplots(1, 2 if correct else 1, squeeze=False)[0]
    expected = "expected " if rows[0].get("expected") else ""
    task, judge = rows[0].get("task", ""), rows[0].get("judge", "")
    data = rows[0].get("data") or task  # (files written before the data was named: the task)
    panel(axes[0], rows, tie=True)
    axes[0].set_ylabel(f"{expected}win rate vs {'chosen' if task == 'dialogue' else 'reference'}")
    seeds = f", mean ± SE over {rows[0]['seeds']} seeds" if rows[0].get("seeds") else ""
    axes[0].set_title(f"{data}: {task}, judge {judge}{seeds}", fontsize=10)
    if correct:
        panel(axes[1], correct, tie=False)
        axes[1].set_ylabel("share of correct responses")
        axes[1].set_title("correct by the dataset's own rule", fontsize=10)
    fig.tight_layout()
    return fig


def panel(ax, rows, tie: bool):
    """One line per policy (± its standard error) over temperature; y spans the values and their
    errors, with a margin (tie: also the 0.5 line, labelled)."""
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    for k, policy in enumerate(policies):
        pts = sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["temperature"])
        dx = 0.008 * (k - (len(policies) - 1) / 2)  # side by side, so error bars stay apart
        ax.errorbar([r["temperature"] + dx for r in pts], [r["win_rate"] for r in pts],
                    yerr=[r["stderr"] or 0.0 for r in pts], marker="o", capsize=3, label=policy)
    ends = [r["win_rate"] + s * (r["stderr"] or 0.0) for r in rows for s in (-1, 1)]
    ends += [0.5] if tie else []
    lo, hi = min(ends), max(ends)
    margin = max(0.1 * (hi - lo), 0.01)
    ax.set_ylim(max(0.0, lo - margin), min(1.0, hi + margin))
    if tie:
        ax.axhline(0.5, color="gray", lw=0.8, ls="--", label="0.5: a tie with the reference")
    ax.set_xlabel("sampling temperature")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "plot":
        import argparse

        ap = argparse.ArgumentParser(prog="python -m hh_tldr.winrate plot",
                                     description="Redraw the win-rate plot (<results>.png beside "
                                     "it) from a results file alone.")
        ap.add_argument("results", help="a winrate.jsonl written by winrate.py")
        args = ap.parse_args(sys.argv[2:])
        try:
            print(plot_winrate(args.results))
        except (ValueError, OSError) as e:
            sys.exit(f"error: {e}")
    else:
        run_main(main, WinRateConfig, epilog="python -m hh_tldr.winrate plot RESULTS.jsonl "
                 "redraws the plot from a results file alone.")
