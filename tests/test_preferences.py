"""preferences.py: HH transcripts split into prompt and responses (awkward rows included), TL;DR
comparisons and reference summaries, the standard and conversational formats, the official repo's
length rule, local parquet/jsonl sources, errors that write nothing, rows data.check_pairs takes,
and the synthetic dialogues' determinism and rule."""

import gzip
import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from data import PAIR_KEYS, Tokenizer, check_pairs

from hh_tldr import preferences as P
from plumbing.utils import read_jsonl
from synthetic import dialogues as D

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


def write_parquet(folder, split, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{split}-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(folder)


def run(tmp_path, dataset, **kw):
    """preferences.main on a source; returns (stats, rows written)."""
    out = str(tmp_path / "out" / "pairs.jsonl")
    stats = P.main(P.PreferencesConfig(dataset=str(dataset), out=out, **kw))
    return stats, read_jsonl(out)


def convert(rows, fmt, tok, max_length=512, max_prompt_length=256):
    counts = Counter()
    return list(P.convert(rows, fmt, tok, max_length, max_prompt_length, counts)), counts


# ----------------------------------------------------------------------------- HH

H, A = "\n\nHuman:", "\n\nAssistant:"
SINGLE = dict(chosen=f"{H} What is 2+2?{A} It is 4.", rejected=f"{H} What is 2+2?{A} It is 5.")
MULTI_PROMPT = f"{H} Hi{A} Hello! How can I help?{H} Tell me a joke.{A}"
MULTI = dict(chosen=MULTI_PROMPT + " Why did the chicken cross the road?",
             rejected=MULTI_PROMPT + " No.")
INSIDE = dict(chosen=f"{H} Reply with 'Assistant: ok' please{A} Assistant: ok",  # no \n\n before
              rejected=f"{H} Reply with 'Assistant: ok' please{A} No thanks.")
TRAILING = dict(chosen=f"{H} Say hi.{A} Hi there.  \n", rejected=f"{H} Say hi.{A} ")
DIFFERENT = dict(chosen=f"{H} Question A{A} x", rejected=f"{H} Question B{A} y")
NO_TURN = dict(chosen=f"{H} hello", rejected=f"{H} hello{A} hi")
# the chosen reply goes on with an invented turn: cutting the rejected transcript at the chosen
# one's prompt length (the official repo) would give garbage; the prompts differ, so it is dropped
EXTRA_TURN = dict(chosen=f"{H} Q{A} A1{H} more{A} A2", rejected=f"{H} Q{A} B")
SAME = dict(chosen=f"{H} Q{A} Same.", rejected=f"{H} Q{A} Same.  ")
HH_ROWS = [SINGLE, MULTI, INSIDE, TRAILING, DIFFERENT, NO_TURN, EXTRA_TURN, SAME]
EXPECTED = [  # (prompt, chosen response, rejected response) of the rows kept, in order
    (f"{H} What is 2+2?{A}", " It is 4.", " It is 5."),
    (MULTI_PROMPT, " Why did the chicken cross the road?", " No."),
    (f"{H} Reply with 'Assistant: ok' please{A}", " Assistant: ok", " No thanks."),
    (f"{H} Say hi.{A}", " Hi there.", ""),
]


def test_hh_split_exact_texts_and_ids(tok):
    rows, counts = convert(HH_ROWS, "hh", tok)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == EXPECTED
    for r, (p, c, rj) in zip(rows, EXPECTED):
        assert list(r) == list(PAIR_KEYS)
        assert r["prompt_ids"] == tok.encode(p)
        assert r["chosen_ids"] == tok.encode(c) + [tok.eos_id]
        assert r["rejected_ids"] == tok.encode(rj) + [tok.eos_id]
        assert r["reward_chosen"] is None and r["reward_rejected"] is None
        # the response keeps its leading space: prompt + response tokenize as the transcript does
        assert r["prompt_ids"] + r["chosen_ids"][:-1] == tok.encode(p + c)
    assert rows[3]["rejected_ids"] == [tok.eos_id]  # an empty reply is a reply: just EOS
    assert counts == Counter(rows=8, written=4, tokens=counts["tokens"],
                             **{"dropped/prompt_mismatch": 2, "dropped/no_assistant": 1,
                                "dropped/identical": 1})


def test_hh_helpers():
    assert P.hh_prompt(MULTI["chosen"]) == MULTI_PROMPT
    assert P.hh_prompt(f"{H} no assistant here, Assistant: none") is None
    with pytest.raises(P.Dropped, match="prompt_mismatch"):
        P.split_hh(**EXTRA_TURN)
    with pytest.raises(P.Dropped, match="no_assistant"):
        P.split_hh(**NO_TURN)


def test_hh_from_parquet_and_jsonl_layouts(tmp_path, tok):
    """The same rows from a parquet folder, a .jsonl file and HH's own hub layout
    (<subset>/train.jsonl.gz) give the same file; --n takes the first rows."""
    folder = write_parquet(tmp_path / "pq", "train", HH_ROWS)
    stats, rows = run(tmp_path, folder, format="hh")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == EXPECTED
    assert stats["written"] == 4 and stats["dropped/prompt_mismatch"] == 2
    assert stats["tokens"] > 0 and stats["tokens_per_s"] > 0
    jsonl = tmp_path / "hh.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in HH_ROWS))
    assert run(tmp_path, jsonl)[1] == rows  # auto: chosen/rejected columns -> hh
    (tmp_path / "hub" / "helpful-base").mkdir(parents=True)
    with gzip.open(tmp_path / "hub" / "helpful-base" / "train.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in HH_ROWS)
    assert run(tmp_path, tmp_path / "hub")[1] == rows
    stats, few = run(tmp_path, folder, n=2)
    assert stats["rows"] == 2 and few == rows[:2]


def test_hh_file_without_assistant_turn_is_an_error_and_writes_nothing(tmp_path):
    rows = [NO_TURN, dict(chosen=f"{H} a", rejected=f"{H} b")]
    folder = write_parquet(tmp_path / "pq", "train", rows)
    out = tmp_path / "new" / "deeper" / "pairs.jsonl"
    with pytest.raises(ValueError, match="no transcript .*Assistant:' turn"):
        P.main(P.PreferencesConfig(dataset=folder, out=str(out), format="hh"))
    assert not (tmp_path / "new").exists()  # not even the folder


def test_bad_row_midway_keeps_the_old_file(tmp_path):
    rows = [SINGLE, MULTI, dict(chosen=None, rejected="x")]
    folder = write_parquet(tmp_path / "pq", "train", rows)
    out = tmp_path / "pairs.jsonl"
    out.write_text("old\n")
    with pytest.raises(ValueError, match="row 2: 'chosen' is None, not text"):
        P.main(P.PreferencesConfig(dataset=folder, out=str(out)))
    assert out.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["pairs.jsonl", "pq"]


def test_missing_column_names_it_and_the_columns_found(tmp_path):
    folder = write_parquet(tmp_path / "pq", "train", [dict(chosen=SINGLE["chosen"], answer="x")])
    out = tmp_path / "out" / "pairs.jsonl"
    with pytest.raises(ValueError, match=r"no column 'rejected' .*columns: \['chosen', 'answer'\]"):
        P.main(P.PreferencesConfig(dataset=folder, out=str(out), format="hh"))
    with pytest.raises(ValueError, match="fit no known layout"):  # auto
        P.main(P.PreferencesConfig(dataset=folder, out=str(out)))
    with pytest.raises(FileNotFoundError, match="no test-"):
        P.main(P.PreferencesConfig(dataset=folder, split="test", out=str(out)))
    assert not (tmp_path / "out").exists()


def test_split_of_one_file_is_its_split_column_or_an_error(tmp_path):
    """One file is one split: --split on it is an error (every row would be labelled that split,
    test rows trained on) unless the file has a "split" column, whose rows it then picks."""
    plain = tmp_path / "all.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in HH_ROWS))
    out = tmp_path / "refused" / "pairs.jsonl"
    for dataset in (plain, write_parquet(tmp_path / "pq", "all", HH_ROWS) + "/"
                    "all-00000-of-00001.parquet"):
        with pytest.raises(ValueError, match="--split test: .* without a 'split' column"):
            P.main(P.PreferencesConfig(dataset=str(dataset), split="test", out=str(out)))
        assert not (tmp_path / "refused").exists()
        assert run(tmp_path, dataset)[0]["rows"] == len(HH_ROWS)  # no --split: every row
    marked = tmp_path / "marked.jsonl"
    marked.write_text("".join(json.dumps(dict(r, split="test" if i < 3 else "train")) + "\n"
                              for i, r in enumerate(HH_ROWS)))
    assert run(tmp_path, marked, split="test")[1] == run(tmp_path, plain, n=3)[1]
    assert run(tmp_path, marked)[0]["rows"] == len(HH_ROWS) - 3  # no --split: train
    with pytest.raises(ValueError, match="'split' column of .* holds test, train"):
        run(tmp_path, marked, split="valid")


def test_cut_off_jsonl_line_is_one_error_naming_the_file_and_line(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    text = "".join(json.dumps(dict(prompt=f"Q{i}", chosen=" a", rejected=" b")) + "\n"
                   for i in range(5))
    (folder / "train.jsonl").write_text(text[:-15])  # the last line cut off
    out = tmp_path / "out" / "pairs.jsonl"
    with pytest.raises(ValueError, match=re.escape(
            f"could not read {folder / 'train.jsonl'}:5: not a JSON object (a line cut off?)")):
        P.main(P.PreferencesConfig(dataset=str(folder), split="train", out=str(out)))
    bad = tmp_path / "bad" / "train-00000-of-00001.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"PAR1 not a parquet file")
    with pytest.raises(ValueError, match=f"could not read {re.escape(str(bad))}: ArrowInvalid"):
        P.main(P.PreferencesConfig(dataset=str(bad.parent), out=str(out)))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- length


def test_truncate_is_the_official_rule():
    p, rs = list(range(10)), [[1] * 3, [2] * 5]
    assert P.truncate(p, rs, 12, 4) == ([6, 7, 8, 9], rs, True, False)  # prompt keeps its end
    long = [[1] * 20, [2] * 2]  # the longer response alone is over max_length
    assert P.truncate(p[:3], long, 12, 4) == (p[:3], [[1] * 8, [2] * 2], False, True)
    # both: the prompt keeps its last 4, each response its first 12 - 4 tokens
    assert P.truncate(p, long, 12, 4) == ([6, 7, 8, 9], [[1] * 8, [2] * 2], True, True)
    # a pair that fits is left alone, even with a prompt longer than max_prompt_length
    assert P.truncate(list(range(300)), [[1] * 5], 512, 256) == (list(range(300)), [[1] * 5],
                                                               False, False)


def test_truncation_counts_and_sides(tmp_path, tok):
    prompt = f"{H} " + " ".join(f"word{i}" for i in range(30)) + A
    long_reply = " " + " ".join(f"reply{i}" for i in range(30))
    rows = [dict(chosen=prompt + long_reply, rejected=prompt + " Short."),  # both cut
            dict(chosen=prompt + " Yes.", rejected=prompt + " No."),        # prompt cut
            SINGLE]                                                          # fits
    stats, out = run(tmp_path, write_parquet(tmp_path / "pq", "train", rows), max_length=24,
                     max_prompt_length=16)
    assert (stats["truncated/prompt"], stats["truncated/response"]) == (2, 1)
    full_p = tok.encode(prompt)
    assert out[0]["prompt_ids"] == full_p[-16:] and out[1]["prompt_ids"] == full_p[-16:]
    assert out[0]["prompt"].endswith(A)  # the end the response answers is kept
    assert out[0]["chosen_ids"] == tok.encode(long_reply)[:8]  # cut from the right: no EOS
    assert out[0]["rejected_ids"] == tok.encode(" Short.") + [tok.eos_id]
    assert out[2]["prompt_ids"] == tok.encode(EXPECTED[0][0])
    check_pairs(out, "pairs.jsonl", block_size=24, vocab_size=tok.vocab_size)


def test_bad_lengths_and_format(tmp_path):
    for kw in (dict(max_length=256, max_prompt_length=256), dict(max_prompt_length=0),
               dict(format="csv")):
        with pytest.raises(ValueError):
            P.main(P.PreferencesConfig(dataset="synthetic", out=str(tmp_path / "x.jsonl"), **kw))
    assert not (tmp_path / "x.jsonl").exists()


# ----------------------------------------------------------------------------- TL;DR

POST = "SUBREDDIT: r/cats\nTITLE: My cat\nPOST: My cat sleeps all day. Is that normal?"
TLDR_ROWS = [dict(prompt=POST, chosen="TL;DR: my cat sleeps a lot ", rejected="TL;DR: dogs bark"),
             dict(prompt=POST, chosen="TL;DR: same", rejected="TL;DR:  same")]


def test_tldr_comparisons(tmp_path, tok):
    stats, rows = run(tmp_path, write_parquet(tmp_path / "pq", "valid1", TLDR_ROWS),
                      split="valid1")
    assert stats["format"] == "tldr" and stats["dropped/identical"] == 1
    (r,) = rows
    assert r["prompt"] == POST + "\nTL;DR:" and r["prompt_ids"] == tok.encode(POST + "\nTL;DR:")
    assert (r["chosen"], r["rejected"]) == (" my cat sleeps a lot", " dogs bark")
    # the text trlx and torchrl train on, post + "\n" + summary, is unchanged
    assert r["prompt"] + r["chosen"] == POST + "\n" + TLDR_ROWS[0]["chosen"].strip()
    check_pairs(rows, "tldr.jsonl", vocab_size=tok.vocab_size)


def test_tldr_sft_completions_share_the_comparisons_prompt(tmp_path, tok):
    sft = [dict(prompt=POST + "\nTL;DR: ", label="my cat sleeps a lot"),
           dict(prompt=POST, label=" cats nap\n")]  # no cue in the prompt: added
    stats, rows = run(tmp_path, write_parquet(tmp_path / "pq", "test", sft), split="test")
    assert stats["format"] == "tldr_sft"
    assert [list(r) for r in rows] == [list(P.COMPLETION_KEYS)] * 2
    assert rows[0]["prompt_ids"] == rows[1]["prompt_ids"] == tok.encode(POST + "\nTL;DR:")
    assert rows[0]["completion"] == " my cat sleeps a lot" and rows[1]["completion"] == " cats nap"
    assert rows[0]["completion_ids"] == tok.encode(" my cat sleeps a lot") + [tok.eos_id]
    pairs, _ = convert(TLDR_ROWS, "tldr", tok)
    assert pairs[0]["prompt_ids"] == rows[0]["prompt_ids"]  # same prompt: a win-rate reference


# ----------------------------------------------------------------------------- prompt, chosen, ...


def msgs(*turns):
    return [dict(role=r, content=c) for r, c in turns]


def test_conversational_renders_as_hh(tok):
    """TRL's conversational layout of an HH row (prompt messages, one assistant message each)
    gives exactly the pair of the HH transcript."""
    conv = dict(prompt=msgs(("user", "Hi"), ("assistant", "Hello! How can I help?"),
                            ("user", "Tell me a joke.")),
                chosen=msgs(("assistant", "Why did the chicken cross the road?")),
                rejected=msgs(("assistant", "No.")))
    rows, _ = convert([conv], "pairs", tok)
    assert rows == convert([MULTI], "hh", tok)[0]
    # implicit prompt: whole conversations in chosen/rejected, split like transcripts
    implicit = {k: conv["prompt"] + conv[k] for k in ("chosen", "rejected")}
    assert convert([implicit], "hh", tok)[0] == rows
    system = dict(conv, prompt=msgs(("system", "Be brief."), ("user", "Hi")))
    assert convert([system], "pairs", tok)[0][0]["prompt"] == f"Be brief.{H} Hi{A}"
    bad = dict(conv, chosen=msgs(("user", "not a reply")))
    with pytest.raises(ValueError, match="row 0: a response is a list of messages starting"):
        convert([bad], "pairs", tok)
    with pytest.raises(ValueError, match="row 0: a message is"):
        convert([dict(conv, prompt=[dict(role="robot", content="x")])], "pairs", tok)


def test_standard_text_pairs_verbatim(tmp_path, tok):
    rows = [dict(prompt="Q: 2+2?\nA:", chosen=" 4 ", rejected=" 5"),
            dict(prompt="", chosen=" a", rejected=" b")]
    stats, out = run(tmp_path, write_parquet(tmp_path / "pq", "train", rows))
    assert stats["format"] == "pairs" and stats["dropped/empty_prompt"] == 1
    assert (out[0]["prompt"], out[0]["chosen"], out[0]["rejected"]) == ("Q: 2+2?\nA:", " 4", " 5")
    check_pairs(out, "pairs.jsonl")


def test_detect_format():
    first = dict(chosen="TL;DR: x")
    assert P.detect_format(["prompt", "label"], {}) == "tldr_sft"
    assert P.detect_format(["prompt", "chosen", "rejected"], first) == "tldr"
    assert P.detect_format(["prompt", "chosen", "rejected"], dict(chosen=" x")) == "pairs"
    assert P.detect_format(["chosen", "rejected"], {}) == "hh"


# ----------------------------------------------------------------------------- synthetic dialogues


def test_synthetic_dialogues_deterministic_and_follow_the_rule():
    rows = D.synthetic_dialogues(2000, 0)
    assert rows == D.synthetic_dialogues(2000, 0) and rows != D.synthetic_dialogues(2000, 1)
    assert D.synthetic_dialogues(10, 0) == rows[:10]
    right = {"chosen": 0, "rejected": 0}
    for row in rows:
        prompt, chosen, rejected = P.split_hh(row["chosen"], row["rejected"])
        assert prompt.startswith(f"{H} ") and prompt.count(A) == 1
        c, r = D.dialogue_reward(prompt, chosen), D.dialogue_reward(prompt, rejected)
        assert c >= r  # the rule never prefers the rejected reply
        right["chosen"] += c
        right["rejected"] += r
        # both replies are one sentence of the same table: only the opening words and the value
        # may differ
        words = lambda x: x.removeprefix(" Sure!").removeprefix(" Good question.").split(" ")
        assert words(rejected)[1:-1] == words(chosen)[1:-1]
        q = prompt.removesuffix(A).split(". ")[-1].split("! ")[-1]
        if " plus " in q:  # arithmetic, checked here rather than by the module's own table
            a, b = (D.NUMBERS.index(w) for w in q.rstrip("?").split()[-3::2])
            assert chosen.endswith(f" is {D.NUMBERS[a + b]}.") == bool(c)
            assert rejected.endswith(f" is {D.NUMBERS[a + b]}.") == bool(r)
    # each reply is right with probability 1/2: the better of two is right 3/4 of the time, the
    # worse 1/4 (2,000 rows: standard error about 0.01)
    assert abs(right["chosen"] / len(rows) - 0.75) < 0.04
    assert abs(right["rejected"] / len(rows) - 0.25) < 0.04
    assert D.dialogue_reward(f"{H} Hi! What is two plus two?{A}", " Well: Two plus two is four.")


def test_synthetic_parquet_equals_in_memory_and_fits_the_compact_vocab(tmp_path):
    sizes = {"train": 200, "test": 20}
    folder = D.write_synthetic_dialogues(str(tmp_path / "dialogues"), seed=3, sizes=sizes)
    assert sorted(os.listdir(folder)) == ["test-00000-of-00001.parquet",
                                          "train-00000-of-00001.parquet"]
    kw = dict(tokenizer="dialogue", max_length=64, max_prompt_length=32, seed=3)
    _, from_folder = run(tmp_path, folder, split="test", **kw)
    stats, in_memory = run(tmp_path, "synthetic", split="test", n=20, **kw)
    # two replies drawn alike can be the same text: no preference, dropped and counted
    rows = D.synthetic_dialogues(20, D.seed_for(3, 1))  # the test split of seed 3
    identical = sum(r["chosen"] == r["rejected"] for r in rows)
    assert from_folder == in_memory and stats["dropped/identical"] == identical
    assert len(in_memory) == 20 - identical > 0
    tok = Tokenizer(D.dialogue_vocab())
    assert tok.vocab_size < 200
    ids = [i for r in from_folder for k in PAIR_KEYS[:3] for i in r[k]]
    assert tok.unk_id not in ids  # the vocabulary covers every text of the grammar
    check_pairs(from_folder, "d.jsonl", block_size=64, vocab_size=tok.vocab_size)


def test_synthetic_validation_split_is_a_third_stream(tmp_path):
    """The tiny preset chooses checkpoints on a validation split: drawn from the grammar like the
    other two, by its own seed, so it repeats neither the train nor the test rows; adding it left
    the train and test streams as they were (their seeds are their positions 0 and 1)."""
    kw = dict(tokenizer="dialogue", max_length=64, max_prompt_length=40)
    _, val = run(tmp_path, "synthetic", split="validation", **kw)
    _, test = run(tmp_path, "synthetic", split="test", **kw)
    assert len(val) > 300 and val != test
    assert [r["chosen"] for r in test[:5]] == [
        P.split_hh(r["chosen"], r["rejected"])[1]
        for r in D.synthetic_dialogues(400, D.seed_for(0, 1)) if r["chosen"] != r["rejected"]][:5]
    pairs = lambda rows: {(r["prompt"], r["chosen"], r["rejected"]) for r in rows}
    assert len(pairs(val) & pairs(test)) < len(val) // 4  # a few repeats: the grammar is small
    with pytest.raises(ValueError, match="splits train, test, validation, not 'dev'"):
        run(tmp_path, "synthetic", split="dev", **kw)


# ----------------------------------------------------------------------------- CLI


def test_cli(tmp_path, capsys):
    folder = write_parquet(tmp_path / "pq", "test", HH_ROWS)
    out = str(tmp_path / "data" / "hh_test.jsonl")
    argv = ["--dataset", folder, "--split", "test", "--out", out]
    r = subprocess.run([sys.executable, "-m", "hh_tldr.preferences", *argv, "--format", "hh",
                        "--max_length",
                        "64", "--max_prompt_length", "32"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "-> 4 pairs in" in r.stdout and "2 prompt_mismatch" in r.stdout
    assert "tokens/s" in r.stdout and len(read_jsonl(out)) == 4
    # bad input: one "error:" line, exit status 1, nothing written (in-process: runs.run_main)
    from plumbing.runs import run_main

    with pytest.raises(SystemExit) as e:
        run_main(P.main, P.PreferencesConfig, argv=argv[:-1] + [out + ".bad", "--format", "tldr"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and err[-1].startswith("error:") and "no column 'prompt'" in err[-1]
    assert not os.path.exists(out + ".bad")
