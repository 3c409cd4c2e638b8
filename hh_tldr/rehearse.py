"""hh_tldr.run --rehearse: every stage of the gpt2 preset at its real shapes, cut to a couple of
steps, on a random GPT-2 and synthetic data written in the hub layouts (plumbing/rehearse.py is
frontier.py's; its Measured, print_rehearsal and cut are reused here).

Kept as the preset has them: the model, the data steps' max lengths, the micro-batches, the
win rates' max_new_tokens, generation batch and best-of-N, and the code path of every stage. Cut:
each run to 2 optimizer steps with a checkpoint and a held-out evaluation of one micro-batch at
each (the RM: one epoch of 2 steps, as many train pairs are written), the batch to 2 micro-batches
(one accumulation; 64 would take the CPU many minutes a step), the win rates to one test prompt
at T = 0 and 1 (greedy and sampled; Best-of-N samples its N of it). Its numbers mean nothing.

Nothing is downloaded. Under <out_dir>/inputs/ it writes, once, each folder atomically:
  base/  a GPT-2 of the preset's size (config.json, model.safetensors: the hub layout);
  hh/    (hh) Anthropic/hh-rlhf's layout, <subset>/{train,test}.jsonl.gz of chosen/rejected
         multi-turn transcripts of about 300 tokens;
  tldr_comparisons/, tldr_sft/  (tldr) the layouts of CarperAI/openai_summarize_comparisons
         (prompt, chosen "TL;DR: ...", rejected) and CarperAI/openai_summarize_tldr (prompt ending
         "TL;DR:", label) as data/{split}-00000-of-00001.parquet: posts of about 250 tokens,
         summaries of about 30.
The text is synthetic (synthetic/reviews.py's sentences).
"""

import dataclasses
import gzip
import json
import os
import random

from plumbing import rehearse
from plumbing.utils import write_folder

HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
SUBREDDITS = ("relationships", "AskReddit", "personalfinance", "tifu", "movies")
N_TEST = 8  # test rows per split (the rehearsal's win rates take one prompt of them)


def inputs(out_dir: str, experiment: str) -> dict:
    """The ExperimentConfig overrides that point the gpt2 preset at the rehearsal's inputs."""
    where = os.path.join(out_dir, "inputs")
    data = (dict(dataset=os.path.join(where, "hh")) if experiment == "hh" else
            dict(dataset=os.path.join(where, "tldr_comparisons"),
                 sft_dataset=os.path.join(where, "tldr_sft")))
    return dict(base_model=os.path.join(where, "base"), **data)


def cut(c):
    """A step's config at rehearsal size (module docstring): plumbing.rehearse.cut's counts, the
    batch at 2 micro-batches, the win rates at one prompt, greedy and sampled."""
    from hh_tldr.winrate import WinRateConfig

    c = rehearse.cut(c)
    if isinstance(c, WinRateConfig):
        return dataclasses.replace(c, n=1, temperatures=(0.0, 1.0), judge_n=4)
    if hasattr(c, "micro_batch") and not hasattr(c, "mini_batch"):  # PPO: cut as on IMDb
        return dataclasses.replace(c, batch_size=2 * c.micro_batch)
    return c


def write_inputs(out_dir: str, experiment: str, base: str, n_train: int):
    """Write the rehearsal's inputs (module docstring) where missing: a random GPT-2 of size
    `base` and n_train train rows (and N_TEST test rows) of each dataset the experiment reads."""
    paths = inputs(out_dir, experiment)
    rehearse.write_gpt2(paths["base_model"], base)
    writers = {"hh": ("dataset", write_hh)} if experiment == "hh" else {
        "comparisons": ("dataset", write_tldr_comparisons), "sft": ("sft_dataset", write_tldr_sft)}
    for key, writer in writers.values():
        if not os.path.isdir(paths[key]):
            print(f"rehearsal: synthetic data -> {paths[key]}", flush=True)
            write_folder(paths[key], lambda f, writer=writer: writer(f, n_train))


def texts(n: int, seed: int) -> list[str]:
    """n synthetic paragraphs of about 45 GPT-2 tokens each."""
    from synthetic.reviews import synthetic_reviews

    return [t for t, _ in synthetic_reviews(n, seed)]


def hh_rows(n: int, seed: int) -> list[dict]:
    """HH rows: three Human and two Assistant turns, then the chosen or the rejected reply (about
    300 tokens a transcript), both transcripts sharing the prompt as HH's do."""
    t = texts(7 * n, seed)
    rows = []
    for i in range(n):
        p = t[7 * i: 7 * i + 7]
        prompt = "".join(f"\n\n{role}: {x}" for role, x in
                         zip(("Human", "Assistant") * 3, p[:5])) + "\n\nAssistant:"
        rows.append(dict(chosen=f"{prompt} {p[5]}", rejected=f"{prompt} {p[6]}"))
    return rows


def write_hh(folder: str, n_train: int):
    """Anthropic/hh-rlhf's layout: <subset>/{train,test}.jsonl.gz, the rows spread over its four
    subsets."""
    for split, n, seed in (("train", n_train, 1), ("test", N_TEST, 2)):
        rows = hh_rows(n, seed)
        for k, subset in enumerate(HH_SUBSETS):
            os.makedirs(os.path.join(folder, subset), exist_ok=True)
            with gzip.open(os.path.join(folder, subset, f"{split}.jsonl.gz"), "wt") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows[k::len(HH_SUBSETS)])


def posts(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(post, summary, another summary): a Reddit post of about 250 tokens in TL;DR's layout and
    two summaries of about 30 (a paragraph's first three sentences)."""
    t, rng = texts(7 * n, seed), random.Random(seed)
    summary = lambda x: " ".join(s + "." for s in x.split(". ")[:3]).replace("..", ".")
    return [(f"SUBREDDIT: r/{rng.choice(SUBREDDITS)}\nTITLE: {t[7 * i].split('. ')[0]}\n"
             f"POST: {' '.join(t[7 * i + 1: 7 * i + 5])}", summary(t[7 * i + 5]),
             summary(t[7 * i + 6])) for i in range(n)]


def write_parquet(folder: str, split: str, rows: list[dict]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows),
                   os.path.join(folder, "data", f"{split}-00000-of-00001.parquet"))


def write_tldr_comparisons(folder: str, n_train: int):
    """CarperAI/openai_summarize_comparisons: prompt (the post), chosen, rejected ("TL;DR: ...")."""
    for split, n, seed in (("train", n_train, 3), ("test", N_TEST, 4)):
        write_parquet(folder, split, [dict(prompt=p, chosen=f"TL;DR: {a}", rejected=f"TL;DR: {b}")
                                      for p, a, b in posts(n, seed)])


def write_tldr_sft(folder: str, n_train: int):
    """CarperAI/openai_summarize_tldr: prompt (the post and "\\nTL;DR:"), label (the summary)."""
    for split, n, seed in (("train", n_train, 5), ("test", N_TEST, 6)):
        write_parquet(folder, split, [dict(prompt=f"{p}\nTL;DR:", label=f" {a}")
                                      for p, a, _ in posts(n, seed)])
