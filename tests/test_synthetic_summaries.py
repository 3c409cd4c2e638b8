"""synthetic/summaries.py: the synthetic TL;DR posts, their rule on hand-written summaries, the
labels' noise against its formula, the references between random summaries and the best one, and
hh_tldr/preferences.py's --dataset synthetic_tldr (files the SFT, DPO and win-rate loaders read,
every row round-tripping through the compact vocabulary)."""

import math
import random
import statistics

import pytest

import sft
from data import Tokenizer, check_pairs

from hh_tldr import preferences as P
from hh_tldr.winrate import load_test
from plumbing.utils import read_jsonl
from synthetic import summaries as S

PROMPT = ("SUBREDDIT: r/advice\nTITLE: Rough week\nPOST: Not a big deal, but my cat is sick. "
          "The main thing is that my landlord raised the rent. Also, the heater in my flat is "
          "broken.\nTL;DR:")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(S.summary_vocab())


def texts(row: dict) -> tuple[str, list[str]]:
    """(prompt with the cue, summaries as " <summary>") of a row of either layout."""
    if "label" in row:
        return row["prompt"], [row["label"]]
    return row["prompt"] + S.TLDR, [row[k].removeprefix("TL;DR:") for k in ("chosen", "rejected")]


def test_splits_deterministic_sized_and_in_the_tldr_layouts():
    for split, n in S.SUMMARY_SIZES.items():
        rows = S.summary_split(split, seed=0)
        assert len(rows) == n and rows[:50] == S.summary_split(split, 0, {split: 50})
        assert rows[:50] != S.summary_split(split, 1, {split: 50})
        if split in ("train", "judge"):  # comparisons: the post alone, the cue opening each summary
            assert all(r.keys() == {"prompt", "chosen", "rejected"} and
                       not r["prompt"].endswith("TL;DR:") and
                       r["chosen"].startswith("TL;DR: ") and r["rejected"].startswith("TL;DR: ")
                       for r in rows)
        else:  # the SFT set: the prompt ends with the cue, the label is " <summary>"
            assert all(r.keys() == {"prompt", "label"} and r["prompt"].endswith("\nTL;DR:") and
                       r["label"].startswith(" ") for r in rows)
    streams = [S.summary_split(s, 0, {s: 20})[0]["prompt"] for s in S.SUMMARY_SIZES]
    assert len({p.removesuffix(S.TLDR) for p in streams}) == len(streams)  # a stream each
    with pytest.raises(ValueError, match="splits train, test, validation, sft, judge, not 'dev'"):
        S.summary_split("dev")


def test_the_rule_on_hand_written_summaries():
    r = lambda summary: S.summary_reward(PROMPT, summary)
    assert S.post_facts(PROMPT) == {8: "minor", 0: "main", 1: "also"}
    assert S.best_summary(PROMPT) == " rent raised, heater broken."
    assert r(" rent raised, heater broken.") == 3.0 == r(" heater broken, rent raised.")
    assert r(" Rent raised, heater broken.") == 3.0  # case is ignored
    assert r(" rent raised.") == 2.0 > r(" heater broken.") == 1.0 > r("") == 0.0
    assert r(" rent raised, heater broken, cat sick.") == 2.5  # a minor fact: -0.5
    assert r(" so basically rent raised, heater broken and stuff.") == 3.0 - 4 * S.WORD_COST
    assert r(" rent raised, heater broken, flight cancelled.") == 0.0  # a wrong fact: -3
    assert r(" rent raised, rent raised.") == 1.0  # named twice, paid twice
    assert r(" my landlord raised the rent.") == -5 * S.WORD_COST  # the post's wording: padding
    assert S.summary_reward(PROMPT.removesuffix(S.TLDR), " rent raised.") == 2.0  # no cue
    assert S.summary_reward(PROMPT.strip(), "rent raised.") == 2.0  # as winrate's --rule tries it
    assert r(S.best_summary(PROMPT)) == max(map(r, [" rent raised.", " rent raised, cat sick."]
                                                 + [S.best_summary(PROMPT)]))
    with pytest.raises(ValueError, match="not a synthetic TL;DR prompt"):
        S.summary_reward("SUBREDDIT: r/x\nTITLE: y\nPOST: The main thing is cake.\nTL;DR:", " x")


def test_labels_follow_the_stated_noise():
    """Of a pair with different scores the lower one is chosen with probability
    sigmoid(-|r(a) - r(b)| / TAU); measured on the train split, within 4 standard errors."""
    lower, expected, n = 0, 0.0, 0
    for row in S.summary_split("train", 0):
        prompt, (chosen, rejected) = texts(row)
        diff = S.summary_reward(prompt, chosen) - S.summary_reward(prompt, rejected)
        if diff:
            n += 1
            lower += diff < 0
            expected += 1 / (1 + math.exp(abs(diff) / S.TAU))
    assert n > 15000
    p = expected / n
    assert abs(lower / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    rng = random.Random(0)  # a tie is a coin flip
    assert abs(sum(S.prefer_first(rng, 1.0, 1.0) for _ in range(4000)) / 4000 - 0.5) < 0.04


def test_references_sit_between_random_summaries_and_the_best():
    rows, rng = S.summary_split("validation", 0), random.Random(0)
    ref, cand, best, main = [], [], [], []
    for row in rows:
        prompt = row["prompt"]
        facts = list(S.post_facts(prompt).items())
        ref.append(S.summary_reward(prompt, row["label"]))
        cand.append(S.summary_reward(prompt, S.candidate(rng, facts)))
        best.append(S.summary_reward(prompt, S.best_summary(prompt)))
        main_short = next(S.FACTS[i][1] for i, level in facts if level == "main")
        main.append(main_short in row["label"])
    means = [statistics.mean(x) for x in (cand, ref, best)]
    assert means[0] + 1 < means[1] < means[2] - 0.5, means
    assert all(r <= b for r, b in zip(ref, best)) and 0.8 < statistics.mean(main) < 0.97


def test_preferences_synthetic_tldr_round_trips_and_feeds_the_loaders(tmp_path, tok):
    def write(split, **kw):
        out = str(tmp_path / f"{split}.jsonl")
        stats = P.main(P.PreferencesConfig(dataset="synthetic_tldr", split=split, out=out, **kw))
        return stats, out, read_jsonl(out)

    stats, path, rows = write("train", n=300)  # tokenizer auto: the compact vocabulary
    assert stats["format"] == "tldr" and stats["written"] + stats["dropped/identical"] == 300
    check_pairs(rows, path)
    assert load_test(path)[0] == "pairs"
    drawn = [texts(r) for r in S.summary_split("train", 0)[:300]]
    drawn = [d for d in drawn if d[1][0] != d[1][1]]  # identical summaries: dropped
    for row, (prompt, (chosen, rejected)) in zip(rows, drawn, strict=True):
        assert (row["prompt"], row["chosen"], row["rejected"]) == (prompt, chosen, rejected)
        for k in ("prompt", "chosen", "rejected"):
            assert tok.unk_id not in row[f"{k}_ids"] and tok.decode(row[f"{k}_ids"]) == row[k]
        assert row["chosen_ids"][-1] == row["rejected_ids"][-1] == tok.eos_id

    for split in ("test", "validation", "sft"):
        n = None if split != "sft" else 2000  # every row of test and validation
        stats, path, rows = write(split, n=n)
        assert stats["format"] == "tldr_sft" and stats["written"] == (n or 400)
        assert sum(stats[f"truncated/{k}"] for k in ("prompt", "response")) == 0
        for row, drawn in zip(rows, S.summary_split(split, 0), strict=False):
            assert set(row) == set(P.COMPLETION_KEYS)
            assert (row["prompt"], row["completion"]) == (drawn["prompt"], drawn["label"])
            assert tok.unk_id not in row["prompt_ids"] + row["completion_ids"]
            assert tok.decode(row["prompt_ids"]) == row["prompt"]
            assert tok.decode(row["completion_ids"]) == row["completion"]
            assert row["completion_ids"][-1] == tok.eos_id
            S.summary_reward(row["prompt"], row["completion"])  # the rule reads the decoded text
        kind, test_rows = load_test(path)
        assert kind == "completions" and len(test_rows) == len({tuple(r["prompt_ids"])
                                                                for r in rows})
    cfg = sft.SFTConfig(init="scratch", completions=path, eval_size=64)
    (train_p, train_c), (held_p, _) = sft.build_data(cfg, None)
    assert len(train_p) + len(held_p) == 2000 and len(held_p) >= 64 and train_c[0][-1] == tok.eos_id
    with pytest.raises(ValueError, match="not 'dev'"):
        write("dev")


def test_folder_in_the_hub_layout_equals_in_memory(tmp_path):
    sizes = {"train": 30, "sft": 20}
    folder = S.write_synthetic_summaries(str(tmp_path / "summaries"), seed=2, sizes=sizes)
    for split, n in sizes.items():
        kw = dict(split=split, tokenizer="summary", seed=2)
        a = P.main(P.PreferencesConfig(dataset=folder, out=str(tmp_path / "a.jsonl"), **kw))
        b = P.main(P.PreferencesConfig(dataset="synthetic_tldr", out=str(tmp_path / "b.jsonl"),
                                       n=n, **kw))
        assert a["format"] == b["format"] and a["written"] > 0
        assert read_jsonl(str(tmp_path / "a.jsonl")) == read_jsonl(str(tmp_path / "b.jsonl"))
