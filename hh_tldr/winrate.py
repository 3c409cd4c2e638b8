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

How far to trust the judge: its accuracy on held-out preference pairs (--judge_pairs, by default
the test file when it is a pairs file), the share of pairs whose chosen side it prefers (a tie
0.5), asked exactly as the win rates ask it. Every row of winrate.jsonl carries it
(judge_accuracy, judge_accuracy_stderr, judge_accuracy_n, judge_accuracy_vs), the plot's caption
states it, and judge.json (with judged_pairs.jsonl, each pair's judgment) keeps it, so a rerun
with the same judge and pairs measures nothing again.

Where the truth is known (the synthetic miniatures), --rule names a rule as a second judge: each
comparison also gets the rule's verdict (rule_win_rate, rule_stderr; a panel of the plot), and the
judge's accuracy is measured against the rule too (judge_accuracy_rule, on the pairs the rule
decides): the miniature's analogue of the paper's agreement study of GPT-4 and humans.
"""

import importlib
import json
import os
import random
import sys
from dataclasses import asdict, dataclass

import torch

from data import load_tokenizer
from model import GPT, gpt_folder, sample_completions
from reward import RewardModel, reward_folder, rm_sequence

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
        # one sequence in two rows of a batch can score apart in the last bits: the same
        # sequence (e.g. a pair's chosen and rejected ids alike) is a tie, as it should be
        same = torch.tensor([seqs[k] == seqs[len(b) + k] for k in range(len(b))], dtype=torch.bool)
        r_policy, r_reference = r[: len(b)], torch.where(same, r[: len(b)], r[len(b):])
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


def make_judge(cfg, judge_kind, judge_spec, task, device):
    """(judge, stamp): judge(comparisons) fills in each comparison's outcome and p_win by --judge
    (the rm judge's model loaded once, at its first use); stamp names what the judgments depend on
    beyond the texts (the reward model's files), for judge.json's key."""
    if judge_kind == "openai":
        cache = cfg.cache or os.path.join(cfg.out_dir, "judge_cache.jsonl")
        return lambda cs: openai_judge(cs, judge_spec, task, cfg, cache), None
    path, loaded = reward_folder(judge_spec), []

    def judge(comparisons):
        if not loaded:
            loaded.append(RewardModel.from_pretrained(path).to(device).eval())
        rm_judge(comparisons, loaded[0], load_tokenizer(path).eos_id, cfg.batch_size)
    return judge, file_stamp(path)


# ----------------------------------------------------------------------------- the judge's accuracy

RULES = {"dialogue": ("synthetic.dialogues", "dialogue_reward"),  # 1.0 correct answer, else 0.0
         "summary": ("synthetic.summaries", "summary_reward")}


def load_rule(name: str, prompt: str, response: str, where: str):
    """--rule's function score(prompt, response) -> float, higher is better (imported only here,
    so that winrate.py runs without it), tried once on a test prompt and its reference; None for
    no rule."""
    if not name:
        return None
    module, fn = RULES[name]
    try:
        rule = getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--rule {name} needs {module}.{fn}: {e}") from None
    try:
        rule(prompt.strip(), response.strip())
    except ValueError as e:
        raise ValueError(f"--rule {name} cannot score {where}: {e}") from None
    return rule


def rule_verdict(rule, prompt: str, a: str, b: str) -> tuple[float, float, float]:
    """(rule's score of a, of b, 1.0 / 0.5 / 0.0 as a scores above / level with / below b)."""
    ra, rb = float(rule(prompt, a)), float(rule(prompt, b))
    return ra, rb, 1.0 if ra > rb else 0.0 if ra < rb else 0.5


def rule_summary(comparisons, name: str) -> dict:
    """The rule's win rate: the mean of its verdicts (1 the policy's response scores higher, 0.5
    level, 0 lower) ± standard error; {} without a rule."""
    if not name:
        return {}
    mean, se = mean_stderr([c["rule_win"] for c in comparisons])
    return dict(rule=name, rule_win_rate=mean, rule_stderr=se)


def judge_pairs_file(cfg, kind: str) -> str | None:
    """The pairs the judge's accuracy is measured on: --judge_pairs, else the test file when it is
    a pairs file; None for none ("none", or a completions test file)."""
    if cfg.judge_pairs == "none":
        return None
    return cfg.judge_pairs or (cfg.test if kind == "pairs" else None)


PAIR_KEYS = ("prompt_ids", "chosen_ids", "rejected_ids", "prompt", "chosen", "rejected")


def load_pairs(path: str, vocab_size: int | None = None) -> list[dict]:
    """Every row of a pairs JSONL, with its line number; a file without a rejected side (a
    completions file) is refused, and token ids outside vocab_size (the rm judge's)."""
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"--judge_pairs {path} holds no rows (or does not exist)")
    if not all(k in rows[0] for k in PAIR_KEYS):
        raise ValueError(f"--judge_pairs {path} is not a pairs file (the judge's accuracy is its "
                         f"choice between chosen and rejected): rows need {', '.join(PAIR_KEYS)}; "
                         f"the first has {', '.join(rows[0])}")
    for line, r in enumerate(rows, 1):
        ids, texts = [r.get(k) for k in PAIR_KEYS[:3]], [r.get(k) for k in PAIR_KEYS[3:]]
        if not (all(isinstance(x, list) for x in ids) and ids[0] and
                all(isinstance(x, str) for x in texts)):
            raise ValueError(f"{path}:{line}: needs a non-empty prompt_ids list, chosen_ids and "
                             f"rejected_ids lists and three texts ({', '.join(PAIR_KEYS[3:])})")
        if vocab_size and not all(0 <= i < vocab_size for x in ids for i in x):
            raise ValueError(f"{path}:{line}: a token id lies outside the judge's vocabulary of "
                             f"{vocab_size} (a file of another tokenizer?)")
    return [dict(r, line=line) for line, r in enumerate(rows, 1)]


def pair_comparisons(pairs, seed: int) -> list[dict]:
    """Each held-out pair as a comparison that the judge decides as it decides the win rates':
    chosen in the policy's place and rejected in the reference's (so a "win" is the judge siding
    with the label), the A/B order drawn per pair from the seed, identical texts a tie unasked."""
    out = []
    for p in pairs:
        chosen, rejected = p["chosen"].strip(), p["rejected"].strip()
        tie = chosen == rejected
        out.append(dict(index=p["line"], policy_is=random.Random(f"{seed}/pair/{p['line']}")
                        .choice("AB"), prompt=p["prompt"].strip(), response=chosen,
                        reference=rejected, prompt_ids=p["prompt_ids"],
                        response_ids=p["chosen_ids"], reference_ids=p["rejected_ids"],
                        outcome="tie" if tie else None, p_win=0.5 if tie else None))
    return out


def no_accuracy() -> dict:
    return dict(judge_accuracy=None, judge_accuracy_stderr=None, judge_accuracy_n=0,
                judge_accuracy_vs=None)


def judge_accuracy(cfg, judge, stamp, path: str, pairs: list[dict], rule) -> dict:
    """The judge's accuracy on a seeded choice of --judge_n of `pairs` (load_pairs of `path`, read
    once by main): the mean over pairs of 1 (it prefers the chosen side), 0.5 (a tie) or 0 (the
    rejected side), failures left out and counted, ± standard error. With a rule, also against
    the rule: on the pairs whose sides the
    rule tells apart, the share the judge gives the rule's side (judge_accuracy_rule), and how
    often the labels do (labels_agree_rule). Kept in <out_dir>/judge.json (each pair's judgment in
    judged_pairs.jsonl) under a key of the judge, the pairs file, --judge_n, the seed and the rule:
    a rerun with the same ones reads it back and judges nothing."""
    saved_path = os.path.join(cfg.out_dir, "judge.json")
    key = [cfg.judge, stamp, file_stamp(path), cfg.judge_n, cfg.seed, cfg.rule]
    try:
        with open(saved_path) as f:
            saved = json.load(f)
        if saved["key"] == key:
            return saved["accuracy"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    comparisons = pair_comparisons(choose_prompts(pairs, cfg.judge_n, cfg.seed), cfg.seed)
    judge(comparisons)
    judged = []
    for c in comparisons:
        j = dict(index=c["index"], chosen_is=c["policy_is"],
                 judge={"win": "chosen", "loss": "rejected"}.get(c["outcome"], c["outcome"]),
                 agrees={"win": 1.0, "tie": 0.5, "loss": 0.0}.get(c["outcome"]))
        j.update({new: c[old] for old, new in (("r_policy", "r_chosen"),
                                               ("r_reference", "r_rejected"),
                                               ("choice", "choice"), ("answer", "answer"))
                  if old in c})
        if rule:
            j["rule_chosen"], j["rule_rejected"], side = rule_verdict(
                rule, c["prompt"], c["response"], c["reference"])
            j["rule_side"] = {1.0: "chosen", 0.0: "rejected"}.get(side)  # None: the rule ties
            if j["rule_side"] and j["agrees"] is not None:
                j["agrees_rule"] = j["agrees"] if side == 1.0 else 1.0 - j["agrees"]
        judged.append(j)
    acc, se = mean_stderr([j["agrees"] for j in judged if j["agrees"] is not None])
    out = dict(judge_accuracy=acc, judge_accuracy_stderr=se,
               judge_accuracy_n=sum(j["agrees"] is not None for j in judged),
               judge_accuracy_vs="labels", judge_accuracy_failures=sum(
                   j["judge"] == "failure" for j in judged), judge_pairs=path)
    if rule:
        decided = [j for j in judged if j["rule_side"]]
        acc, se = mean_stderr([j["agrees_rule"] for j in decided if "agrees_rule" in j])
        out.update(judge_accuracy_rule=acc, judge_accuracy_rule_stderr=se,
                   judge_accuracy_rule_n=sum("agrees_rule" in j for j in decided),
                   labels_agree_rule=mean_stderr([float(j["rule_side"] == "chosen")
                                                  for j in decided])[0])
    write_jsonl(os.path.join(cfg.out_dir, "judged_pairs.jsonl"), judged)
    atomic_write_json(saved_path, dict(key=key, accuracy=out))
    return out


def show(mean, se) -> str:
    """"0.654 ± 0.020" (without the ± where no standard error; "n/a" for no value)."""
    return "n/a" if mean is None else f"{mean:.3f}" + (f" ± {se:.3f}" if se is not None else "")


def accuracy_line(r: dict) -> str | None:
    """The judge's accuracy in a results row as one line (the plot's caption, the printout); None
    for a row written before it was measured."""
    if "judge_accuracy_n" not in r:
        return None
    judge = f"judge {r.get('judge', '')}"
    if not r["judge_accuracy_n"] and not r.get("judge_accuracy_failures"):
        return f"{judge}: accuracy not measured (no held-out pairs)"
    failed = r.get("judge_accuracy_failures")
    line = (f"{judge}: accuracy {show(r['judge_accuracy'], r['judge_accuracy_stderr'])} on "
            f"{r['judge_accuracy_n']} held-out pairs (vs their {r['judge_accuracy_vs']}"
            f"{f'; {failed} failures' if failed else ''})")
    if r.get("judge_accuracy_rule_n"):
        line += (f"; {show(r['judge_accuracy_rule'], r['judge_accuracy_rule_stderr'])} vs the "
                 f"rule {r['rule']} on the {r['judge_accuracy_rule_n']} it decides (the labels "
                 f"agree with it on {r['labels_agree_rule']:.3f})")
    return line


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
    judge_pairs: str = arg("", "pairs JSONL the judge's accuracy is measured on, chosen against "
                           "rejected (default: --test if a pairs file; none: not measured)")
    judge_n: int = arg(256, "held-out pairs for the judge's accuracy, a seeded choice (0: all)",
                       ">= 0")
    rule: str = arg("", "a rule as a second judge where the truth is known: dialogue "
                    "(synthetic.dialogues) or summary (synthetic.summaries); default: none")
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
    if cfg.rule not in ("", *RULES):
        raise ValueError(f"--rule must be one of {', '.join(RULES)} (or empty), not {cfg.rule!r}")
    if cfg.judge_pairs not in ("", "none") and not os.path.isfile(cfg.judge_pairs):
        raise FileNotFoundError(f"--judge_pairs {cfg.judge_pairs}: no such file")
    return kind, spec


def main(cfg: WinRateConfig) -> list[dict]:
    check_fields(cfg)
    judge_kind, judge_spec = check_config(cfg)
    policies = parse_policies(cfg.policies)
    kind, rows = load_test(cfg.test)
    rows = choose_prompts(rows, cfg.n, cfg.seed)
    task = cfg.task if cfg.task != "auto" else detect_task(kind, rows)
    rule = load_rule(cfg.rule, rows[0][1], rows[0][3], cfg.test)
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
    pairs_path = judge_pairs_file(cfg, kind)
    # a file that is no pairs file, or of another vocabulary, fails before sampling
    pairs = (load_pairs(pairs_path, rm_path and load_tokenizer(rm_path).vocab_size)
             if pairs_path else None)
    todo = [(name, name, None) for name, _ in policies]  # (label, policy, N of best-of-N)
    if cfg.best_of:
        todo.append((f"Best of {cfg.best_of}", base, cfg.best_of))
    os.makedirs(cfg.out_dir, exist_ok=True)
    comparisons = sample_comparisons(cfg, todo, folders, rows, pick_path, device)
    judge, stamp = make_judge(cfg, judge_kind, judge_spec, task, device)
    judge(comparisons)
    for c in comparisons if rule else ():  # the rule's verdict beside the judge's
        c["rule_policy"], c["rule_reference"], c["rule_win"] = rule_verdict(
            rule, c["prompt"], c["response"], c["reference"])
    accuracy = (judge_accuracy(cfg, judge, stamp, pairs_path, pairs, rule) if pairs_path else
                no_accuracy())
    results = []
    for label, name, _ in todo:
        for t in cfg.temperatures:
            cs = [c for c in comparisons if c["policy"] == label and c["temperature"] == t]
            results.append(dict(policy=label, checkpoint=folders[name], temperature=t,
                                judge=cfg.judge, task=task, data=data_name(cfg.test),
                                expected=judge_kind == "rm", **summarize(cs),
                                **rule_summary(cs, cfg.rule), **accuracy))
    for c in comparisons:  # the JSONL keeps texts, ids of the response, and the judgment
        del c["prompt_ids"], c["reference_ids"]
    write_jsonl(os.path.join(cfg.out_dir, "comparisons.jsonl"), comparisons)
    write_jsonl(os.path.join(cfg.out_dir, "winrate.jsonl"), results)
    atomic_write_json(os.path.join(cfg.out_dir, "winrate_config.json"), asdict(cfg))
    plot_winrate(os.path.join(cfg.out_dir, "winrate.jsonl"))
    for r in results:
        by_rule = (f", by the rule {show(r['rule_win_rate'], r['rule_stderr'])}"
                   if cfg.rule else "")
        print(f"{r['policy']:>16}  T={r['temperature']:<5}  win rate "
              f"{show(r['win_rate'], r['stderr'])}  (n={r['n']}, ties={r['ties']}, "
              f"failures={r['failures']}){by_rule}")
    print(accuracy_line(results[0]))
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
    in the same colours, where a rule judged too, the rule's win rate, and where measured, the
    share of correct responses by the dataset's own rule (the synthetic dialogues: the rows'
    "correct", or correct.jsonl beside the file); below, the judge's accuracy on held-out pairs
    where measured (accuracy_line). Each panel's y-axis spans the values and their errors (the
    win rates' also 0.5, a tie)."""
    import textwrap

    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone

    rows = [r for r in read_jsonl(jsonl) if r.get("win_rate") is not None]
    if not rows:
        raise ValueError(f"{jsonl} holds no win rates to plot")
    beside = os.path.join(os.path.dirname(jsonl), "correct.jsonl")
    correct = ([dict(r, win_rate=r["correct"], stderr=r.get("correct_stderr")) for r in rows
                if r.get("correct") is not None] or
               [dict(r, win_rate=r["correct"]) for r in read_jsonl(beside)])
    ruled = [dict(r, win_rate=r["rule_win_rate"], stderr=r.get("rule_stderr")) for r in rows
             if r.get("rule_win_rate") is not None]
    n = 1 + bool(ruled) + bool(correct)
    fig = Figure(figsize=(6 if n == 1 else 5.5 * n, 4.5))
    axes = list(fig.subplots(1, n, squeeze=False)[0])
    expected = "expected " if rows[0].get("expected") else ""
    task, judge = rows[0].get("task", ""), rows[0].get("judge", "")
    data = rows[0].get("data") or task  # (files written before the data was named: the task)
    against = "chosen" if task == "dialogue" else "reference"
    ax = axes.pop(0)
    panel(ax, rows, tie=True)
    ax.set_ylabel(f"{expected}win rate vs {against}")
    seeds = f", mean ± SE over {rows[0]['seeds']} seeds" if rows[0].get("seeds") else ""
    ax.set_title(f"{data}: {task},\njudge {judge}{seeds}", fontsize=10)
    if ruled:
        ax = axes.pop(0)
        panel(ax, ruled, tie=True)
        ax.set_ylabel(f"win rate vs {against} by the rule")
        ax.set_title(f"judged by the dataset's rule ({ruled[0]['rule']})", fontsize=10)
    if correct:
        ax = axes.pop(0)
        panel(ax, correct, tie=False)
        ax.set_ylabel("share of correct responses")
        ax.set_title("correct by the dataset's own rule", fontsize=10)
    caption = accuracy_line(rows[0])
    if caption:  # about 13 characters an inch at this size
        caption = textwrap.fill(caption, int(fig.get_figwidth() * 13))
        fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=9)
        fig.tight_layout(rect=(0, 0.045 * (caption.count("\n") + 1) + 0.01, 1, 1))
    else:
        fig.tight_layout()
    return fig


def panel(ax, rows, tie: bool):
    """One line per policy (± its standard error) over temperature, in the order the rows name
    them (so each panel gives a policy the same colour); y spans the values and their errors,
    with a margin (tie: also the 0.5 line, labelled)."""
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
