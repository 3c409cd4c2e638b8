r"""Real preference datasets as this project's pairs file: Anthropic HH dialogues, the TL;DR
summarization comparisons and reference summaries, any prompt/chosen/rejected dataset (text or
chat messages), the synthetic dialogues of the offline tiny preset (synthetic/dialogues.py) and
the synthetic TL;DR posts and summaries (synthetic/summaries.py).

    python -m hh_tldr.preferences --dataset Anthropic/hh-rlhf --split train \
        --out data/hh_train.jsonl
    python -m hh_tldr.preferences --dataset CarperAI/openai_summarize_comparisons --split test \
        --out data/tldr_test.jsonl
    python -m hh_tldr.preferences --dataset CarperAI/openai_summarize_tldr --split train \
        --out data/tldr_sft_train.jsonl      # completions: SFT data and win-rate references
    python -m hh_tldr.preferences --dataset synthetic --split train \
        --out data/dialogue_train.jsonl --max_length 128 --max_prompt_length 64
    python -m hh_tldr.preferences --dataset synthetic_tldr --split sft \
        --out data/summary_sft.jsonl   # train: comparisons; sft, test, validation: completions

Output: one JSON object a line. Pairs (hh, tldr, pairs formats) have data.PAIR_KEYS, with
reward_chosen = reward_rejected = null (human labels carry no scalar reward); completions (tldr_sft)
have COMPLETION_KEYS. Ids are GPT-2 BPE (or a compact vocabulary, --tokenizer); every response ends
with EOS unless it was truncated; the texts are the decoded ids, for reading. Beside it,
<out>.config.json holds the flags that wrote it (run.py reuses a file of the same flags; the
win-rate plot names the dataset from it). One input file is one split: --split on it is an error
unless the file has a "split" column.

Conventions (the official DPO repo is eric-mitchell/direct-preference-optimization,
preference_datasets.py):
  - HH: the prompt is everything up to and including the last "\n\nAssistant:" of a transcript, the
    response what follows, with its leading space (as the official repo: GPT-2 BPE writes " Sure"
    as one token, so prompt + response tokenize as the whole transcript does). Unlike the official
    repo, which cuts the rejected transcript at the chosen one's prompt length, both prompts are
    found and must be equal; a row where they differ, or without an Assistant turn, is dropped
    and counted.
  - Every response loses its trailing whitespace, as EOS follows it (the official repo keeps it);
    a pair whose responses are then the same tokens is dropped (no preference; trlx and torchrl
    drop chosen == rejected TL;DR pairs too, the official repo keeps them).
  - Every dataset is rendered in the HH template, so the model sees one layout: chat messages as
    "\n\nHuman: <user>" and "\n\nAssistant: <assistant>" turns (a system message's text opens the
    prompt), the prompt ending "\n\nAssistant:" and the response " <assistant text>". TL;DR
    prompts end with the cue "TL;DR:" and summaries are " <summary>": the comparisons carry the
    cue in the summaries ("TL;DR: ..."), which trlx and torchrl join to the post as
    post + "\n" + summary; we move it into the prompt, which leaves that text unchanged.
  - Length, as the official tokenize_batch_element: responses get EOS; if prompt + the longer
    response exceeds max_length (official default 512), the prompt keeps its last
    max_prompt_length tokens (default 256; the official repo's keep_end, which it uses for HH,
    keep_start for SHP and SE; keep_end suits TL;DR too, whose prompt ends with the cue); if still
    too long, each response keeps its first max_length - max_prompt_length tokens. Truncated rows
    are counted; none is dropped for length alone (a pair whose two responses become the same
    tokens once cut is dropped as identical).
"""

import contextlib
import glob
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass

from data import PAIR_KEYS, Tokenizer, _load_dataset, load_tokenizer

from plumbing.flags import arg, check_fields
from plumbing.runs import config_dict, run_main
from plumbing.utils import atomic_write, atomic_write_json, load_files, resolve_checkpoint, seed_for
from synthetic import COMPACT_VOCABS, compact_vocab
from synthetic.dialogues import SYNTHETIC_SIZES, synthetic_dialogues
from synthetic.summaries import summary_split

FORMATS = ("auto", "hh", "tldr", "tldr_sft", "pairs")
COLUMNS = {"hh": ("chosen", "rejected"), "tldr": ("prompt", "chosen", "rejected"),
           "pairs": ("prompt", "chosen", "rejected"), "tldr_sft": ("prompt", "label")}
COMPLETION_KEYS = ("prompt_ids", "completion_ids", "prompt", "completion")
DROPS = ("no_assistant", "prompt_mismatch", "identical", "empty_prompt")
ASSISTANT = "\n\nAssistant:"
ROLES = {"user": "Human", "assistant": "Assistant"}
TLDR = "TL;DR:"


@dataclass
class PreferencesConfig:
    dataset: str = arg("Anthropic/hh-rlhf",
                       'hub name, local folder/.parquet/.jsonl, "synthetic" (dialogues) or '
                       '"synthetic_tldr" (summaries)')
    split: str | None = arg(None, "train (None: train; one file without a 'split' column: all "
                            "its rows) | test (TL;DR comparisons: valid1, valid2; SFT set: valid)")
    out: str = arg("data/hh_train.jsonl", "the JSONL written (atomically; nothing on bad input)")
    format: str = arg("auto", "auto (from the columns) | hh | tldr | tldr_sft | pairs")
    tokenizer: str = arg("auto", "auto (synthetic: dialogue, synthetic_tldr: summary, else gpt2) "
                         "| gpt2 | dialogue | summary | checkpoint")
    max_length: int = arg(512,
                          "prompt + longer response, in tokens (official DPO repo: 512)", "> 0")
    max_prompt_length: int = arg(
        256, "a too-long pair's prompt keeps its last N tokens (official)", "> 0")
    n: int | None = arg(None, "only the first N rows of the split")
    seed: int = arg(0, "the synthetic dialogues and summaries", ">= 0")


# ----------------------------------------------------------------------------- loading


def load_split(source: str, split: str | None, seed: int = 0):
    """A split as a datasets.Dataset (split None: "train"). data._load_dataset reads hub names,
    .parquet files, folders of {split}-*.parquet and save_to_disk folders; JSON lines, HH's own
    layout on the hub (helpful-base/train.jsonl.gz, ...), are read here. One file holds one split
    unless it has a "split" column (file_split)."""
    import datasets

    if source == "synthetic":
        split = split or "train"
        if split not in SYNTHETIC_SIZES:
            raise ValueError(f"the synthetic dialogues have splits "
                             f"{', '.join(SYNTHETIC_SIZES)}, not {split!r}")
        seed = seed_for(seed, list(SYNTHETIC_SIZES).index(split))
        return datasets.Dataset.from_list(synthetic_dialogues(SYNTHETIC_SIZES[split], seed))
    if source == "synthetic_tldr":  # train, judge: comparisons; sft, test, validation: references
        return datasets.Dataset.from_list(summary_split(split or "train", seed))
    if os.path.isfile(source):
        json_lines = re.search(r"\.jsonl?(\.gz)?$", source)
        return file_split(load_files("json", [source]) if json_lines else
                          _load_dataset(source, "train"), source, split)
    split, files = split or "train", []
    if os.path.isdir(source) and not os.path.exists(os.path.join(source, "dataset_dict.json")):
        def find(ext):
            return sorted(f for pattern in (f"{split}{ext}", f"{split}-*{ext}") for f in
                          glob.glob(os.path.join(source, "**", pattern), recursive=True))
        if not find(".parquet"):
            files = find(".json*")
            if not files:
                raise FileNotFoundError(f"{source} has no {split}-*.parquet or {split}.jsonl "
                                        f"file (the hub layout)")
    if files:
        return load_files("json", files)
    return _load_dataset(source, split)


def file_split(ds, source: str, split: str | None):
    """The rows of one file that --split asks for: those of its "split" column (train without
    --split); with no such column, every row, and --split is an error (it would label every row
    as that split: test rows trained on)."""
    if "split" not in ds.column_names:
        if split is not None:
            raise ValueError(f"--split {split}: {source} is one file without a 'split' column, so "
                             f"every row would be taken as {split}; give a folder with "
                             f"{split}.jsonl in the hub layout, a 'split' column, or no --split "
                             f"(every row)")
        return ds
    split, found = split or "train", sorted(set(map(str, ds["split"])))
    if split not in found:
        raise ValueError(f"--split {split}: the 'split' column of {source} holds "
                         f"{', '.join(found)}")
    return ds.filter(lambda s: s == split, input_columns="split")


def detect_format(columns, first: dict) -> str:
    """The format of a dataset from its columns (and, for TL;DR, its first summary)."""
    if {"prompt", "label"} <= set(columns):
        return "tldr_sft"
    if {"prompt", "chosen", "rejected"} <= set(columns):
        c = first["chosen"]
        return "tldr" if isinstance(c, str) and c.lstrip().startswith(TLDR) else "pairs"
    if {"chosen", "rejected"} <= set(columns):
        return "hh"
    raise ValueError(f"columns {columns} fit no known layout: chosen, rejected (hh); prompt, "
                     f"chosen, rejected (tldr, pairs); prompt, label (tldr_sft)")


# ----------------------------------------------------------------------------- rows -> texts


class Dropped(Exception):
    """A row left out of the output; the message is its reason (one of DROPS)."""


def hh_prompt(transcript: str) -> str | None:
    """Everything up to and including the last "\\n\\nAssistant:" (None if there is none)."""
    i = transcript.rfind(ASSISTANT)
    return None if i < 0 else transcript[: i + len(ASSISTANT)]


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two HH transcripts."""
    pc, pr = hh_prompt(chosen), hh_prompt(rejected)
    if pc is None or pr is None:
        raise Dropped("no_assistant")
    if pc != pr:  # never cut one transcript at the other's prompt
        raise Dropped("prompt_mismatch")
    return pc, chosen[len(pc):], rejected[len(pr):]


def render(messages, where: str) -> str:
    """Chat messages in the HH template: "\\n\\nHuman: " + a user message, "\\n\\nAssistant: " +
    an assistant message; a system message's text as it is."""
    out = []
    for m in messages:
        if not (isinstance(m, dict) and m.get("role") in ("system", *ROLES)
                and isinstance(m.get("content"), str)):
            raise ValueError(f"{where}: a message is {{'role': user | assistant | system, "
                             f"'content': text}}, not {str(m)[:80]}")
        out.append(m["content"] if m["role"] == "system" else
                   f"\n\n{ROLES[m['role']]}: {m['content']}")
    return "".join(out)


def render_response(messages, where: str) -> str:
    """An assistant's reply (a list of messages starting with the assistant's) as " <text>"."""
    if not (isinstance(messages, list) and messages and isinstance(messages[0], dict)
            and messages[0].get("role") == "assistant"):
        raise ValueError(f"{where}: a response is a list of messages starting with the "
                         f"assistant's, not {str(messages)[:80]}")
    return render(messages, where)[len(ASSISTANT):]


def tldr_prompt(post: str) -> str:
    """A post that ends with the cue "TL;DR:" (the SFT set's prompts have it; the comparisons'
    prompts do not, their summaries do)."""
    return post.rstrip() if post.rstrip().endswith(TLDR) else post + "\n" + TLDR


def tldr_summary(summary: str) -> str:
    """A summary without its "TL;DR:" cue, as " <summary>"."""
    s = summary.strip()
    return " " + (s[len(TLDR):] if s.startswith(TLDR) else s).strip()


def row_texts(row: dict, fmt: str, where: str) -> tuple[str, ...]:
    """(prompt, chosen, rejected) texts of a row; (prompt, completion) for tldr_sft."""
    values = [row[c] for c in COLUMNS[fmt]]
    if fmt == "hh" and all(isinstance(v, list) for v in values):  # messages, no prompt column
        values = [render(v, where) for v in values]
    if fmt == "pairs" and all(isinstance(v, list) for v in values):  # conversational
        return (render(values[0], where) + ASSISTANT,
                *(render_response(v, where) for v in values[1:]))
    for c, v in zip(COLUMNS[fmt], values):
        if not isinstance(v, str):
            raise ValueError(f"{where}: {c!r} is {str(v)[:60]}, not text (or, in the pairs "
                             f"format, every column a list of messages)")
    if fmt == "hh":
        return split_hh(*values)
    if fmt in ("tldr", "tldr_sft"):
        return tldr_prompt(values[0]), *(tldr_summary(v) for v in values[1:])
    return tuple(values)


# ----------------------------------------------------------------------------- texts -> ids


def truncate(prompt: list[int], responses: list[list[int]], max_length: int,
             max_prompt_length: int):
    """The official repo's rule: if prompt + the longest response exceeds max_length, keep the
    prompt's last max_prompt_length tokens; if that is still too long, keep each response's first
    max_length - max_prompt_length tokens. Returns (prompt, responses, prompt cut, a response
    cut)."""
    longest = max(map(len, responses))
    cut_prompt = cut_response = False
    if len(prompt) + longest > max_length:
        cut_prompt = len(prompt) > max_prompt_length
        prompt = prompt[-max_prompt_length:]
        if len(prompt) + longest > max_length:
            keep = max_length - max_prompt_length
            cut_response = True
            responses = [r[:keep] for r in responses]
    return prompt, responses, cut_prompt, cut_response


def convert(ds, fmt: str, tok: Tokenizer, max_length: int, max_prompt_length: int,
            counts: Counter, where: str = "dataset", progress: bool = False):
    """Yield the output rows of a dataset's rows, counting rows, drops, truncations and tokens
    (the tokens encoded) in `counts`."""
    from tqdm import tqdm

    t0 = time.time()
    with tqdm(ds, desc=f"{fmt} rows", mininterval=1.0, disable=not progress) as bar:
        for i, row in enumerate(bar):
            counts["rows"] += 1
            if i % 1000 == 999:
                bar.set_postfix_str(f"{counts['tokens'] / (time.time() - t0):,.0f} tokens/s",
                                    refresh=False)
            try:
                prompt, *responses = row_texts(row, fmt, f"{where} row {i}")
                if not prompt:
                    raise Dropped("empty_prompt")
            except Dropped as reason:
                counts[f"dropped/{reason}"] += 1
                continue
            prompt_ids = tok.encode(prompt)
            response_ids = [tok.encode(r.rstrip()) + [tok.eos_id] for r in responses]
            counts["tokens"] += len(prompt_ids) + sum(map(len, response_ids))
            prompt_ids, response_ids, cut_p, cut_r = truncate(prompt_ids, response_ids,
                                                              max_length, max_prompt_length)
            if len(response_ids) == 2 and response_ids[0] == response_ids[1]:
                counts["dropped/identical"] += 1  # no preference (also after truncation)
                continue
            counts["truncated/prompt"] += cut_p
            counts["truncated/response"] += cut_r
            counts["written"] += 1
            texts = [tok.decode(ids) for ids in (prompt_ids, *response_ids)]
            if fmt == "tldr_sft":
                yield dict(zip(COMPLETION_KEYS, (prompt_ids, response_ids[0], *texts)))
            else:
                yield dict(zip(PAIR_KEYS, (prompt_ids, *response_ids, *texts, None, None)))


def make_tokenizer(name: str, dataset: str) -> Tokenizer:
    if name == "auto":
        name = {"synthetic": "dialogue", "synthetic_tldr": "summary"}.get(dataset, "gpt2")
    if name == "gpt2":
        return Tokenizer()
    if name in COMPACT_VOCABS:
        return Tokenizer(compact_vocab(name))
    return load_tokenizer(resolve_checkpoint(name))


def write_atomic(path: str, write):
    """utils.atomic_write, creating the file's folder; a folder it created is removed again if
    the write fails, so bad input leaves nothing behind."""
    created, d = [], os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(d):
        created.append(d)
        d = os.path.dirname(d)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        atomic_write(path, write)
    except BaseException:
        with contextlib.suppress(OSError):
            for d in created:  # deepest first
                os.rmdir(d)
        raise


def main(cfg: PreferencesConfig) -> dict:
    check_fields(cfg)
    if cfg.format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, not {cfg.format!r}")
    if not 0 < cfg.max_prompt_length < cfg.max_length:
        raise ValueError(f"need 0 < max_prompt_length < max_length, got {cfg.max_prompt_length} "
                         f"and {cfg.max_length}")
    tok = make_tokenizer(cfg.tokenizer, cfg.dataset)
    ds = load_split(cfg.dataset, cfg.split, cfg.seed)
    if cfg.n is not None:
        ds = ds.select(range(min(cfg.n, len(ds))))
    where = cfg.dataset + (f" ({cfg.split})" if cfg.split else "")
    if len(ds) == 0:
        raise ValueError(f"{where} has no rows")
    fmt = detect_format(ds.column_names, ds[0]) if cfg.format == "auto" else cfg.format
    for c in COLUMNS[fmt]:
        if c not in ds.column_names:
            raise ValueError(f"{where} has no column {c!r} (format {fmt} needs "
                             f"{', '.join(COLUMNS[fmt])}); its columns: {ds.column_names}")
    counts, t0 = Counter(), time.time()

    def write(tmp):
        with open(tmp, "w") as f:
            for row in convert(ds, fmt, tok, cfg.max_length, cfg.max_prompt_length, counts,
                               where, progress=True):
                f.write(json.dumps(row) + "\n")
        if counts["dropped/no_assistant"] == counts["rows"]:
            raise ValueError(f"no transcript of {where} has an '\\n\\nAssistant:' turn: not "
                             f"the HH layout")
        if counts["written"] == 0:
            raise ValueError(f"every row of {where} was dropped: {dict(counts)}")
    write_atomic(cfg.out, write)
    atomic_write_json(cfg.out + ".config.json", config_dict(cfg))  # what wrote it (run.py, plots)

    seconds = time.time() - t0
    stats = {"format": fmt, "rows": counts["rows"], "written": counts["written"],
             **{f"dropped/{d}": counts[f"dropped/{d}"] for d in DROPS},
             **{f"truncated/{k}": counts[f"truncated/{k}"] for k in ("prompt", "response")},
             "tokens": counts["tokens"], "tokens_per_s": counts["tokens"] / max(seconds, 1e-9)}
    what = "completions" if fmt == "tldr_sft" else "pairs"
    print(f"{fmt}: {stats['rows']} rows of {where} -> {stats['written']} {what} in {cfg.out}")
    print(f"dropped {stats['rows'] - stats['written']}: " +
          ", ".join(f"{counts[f'dropped/{d}']} {d}" for d in DROPS))
    print(f"truncated (max_length {cfg.max_length}, max_prompt_length {cfg.max_prompt_length}): "
          f"{stats['truncated/prompt']} prompts from the left, {stats['truncated/response']} "
          f"rows' responses from the right")
    print(f"{stats['tokens']:,} tokens in {seconds:.1f} s: {stats['tokens_per_s']:,.0f} tokens/s")
    return stats


if __name__ == "__main__":
    run_main(main, PreferencesConfig)
