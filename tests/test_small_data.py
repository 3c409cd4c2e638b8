"""Small data is safe: sft.py (--pairs, --completions), dpo.py and reward.py train (bt and label)
print "N train / M held out" at their start, and a held-out set that leaves fewer rows to train on
than it holds out (a researcher's 260 pairs under the default --eval_size) is refused with one
`error:` line naming --eval_size and the largest value that passes, before any run folder exists.
"""

import json
import os
import re

import pytest

import dpo
import reward
import sft
from data import Tokenizer, check_held_out, pair_row, split_pairs
from model import GPT, GPTConfig

from plumbing.runs import is_done, run_main
from synthetic.dialogues import dialogue_vocab

N_ROWS = 260  # the user's file: 260 pairs, one prompt each


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A tiny GPT checkpoint with the dialogues' compact vocabulary (the init of DPO and the RM),
    and a 260-row pairs file and completions file in the real formats."""
    root = tmp_path_factory.mktemp("small")
    tok = Tokenizer(dialogue_vocab())
    init = str(root / "init")
    GPT(GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16,
                  eos_token_id=tok.eos_id)).save_pretrained(init)
    tok.save(init)
    pairs, completions = root / "pairs.jsonl", root / "completions.jsonl"
    with open(pairs, "w") as f, open(completions, "w") as g:
        for i in range(N_ROWS):
            prompt, chosen, rejected = [1 + i % 50, 1 + i // 50], [3, 4, tok.eos_id], [5]
            f.write(json.dumps(pair_row(prompt, chosen, rejected, None, None, tok)) + "\n")
            g.write(json.dumps(dict(prompt_ids=prompt, completion_ids=chosen,
                                    prompt=tok.decode(prompt), completion=tok.decode(chosen)))
                    + "\n")
    return dict(root=root, init=init, pairs=str(pairs), completions=str(completions))


TINY = ["--device", "cpu", "--batch_size", "8", "--micro_batch", "8", "--save_every", "2",
        "--eval_every", "2"]
SCRIPTS = {  # name: (main, config class, its flags but the data's, the flags of two steps)
    "sft --pairs": (sft.main, sft.SFTConfig, ["--init", "scratch", "--vocab", "dialogue",
                                              "--n_embd", "16", "--block_size", "32"],
                    ["--steps", "2", *TINY]),
    "sft --completions": (sft.main, sft.SFTConfig, ["--init", "scratch", "--vocab", "dialogue",
                                                    "--n_embd", "16", "--block_size", "32"],
                          ["--steps", "2", *TINY]),
    "dpo": (dpo.main, dpo.DPOConfig, ["--init", "{init}"], ["--steps", "2", *TINY]),
    "reward.py train --objective bt": (reward.train, reward.RMConfig,
                                       ["--objective", "bt", "--init", "{init}"],
                                       ["--epochs", "1", *TINY, "--batch_size", "64",
                                        "--micro_batch", "64"]),
}


def argv_of(name, small, out_dir, extra=()):
    main, cls, flags, _ = SCRIPTS[name]
    data = ["--completions", small["completions"]] if "completions" in name else [
        "--pairs", small["pairs"]]
    return [f.format(**small) for f in flags] + data + ["--out_dir", out_dir, *extra]


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_held_out_set_leaving_too_little_is_refused_then_a_smaller_one_runs(name, small,
                                                                             capsys):
    main, cls, _, steps = SCRIPTS[name]
    out = str(small["root"] / re.sub(r"\W+", "_", name))
    # the defaults (sft, dpo: 256 pairs held out; the RM: 512) leave ~4 of 260 to train on
    with pytest.raises(SystemExit) as e:
        run_main(main, cls, argv_of(name, small, out))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 1 and sum("error:" in ln for ln in lines) == 1, lines
    assert lines[-1].startswith("error: --eval_size ") and "to train on" in lines[-1], lines[-1]
    assert not os.path.exists(out)  # refused before the run folder
    suggested = int(re.search(r"pass --eval_size (\d+) or less", lines[-1]).group(1))
    assert 0 < suggested <= N_ROWS // 2

    # the largest --eval_size the error names runs, and says how the data was split
    run_main(main, cls, argv_of(name, small, out, ["--eval_size", str(suggested), *steps]))
    err = capsys.readouterr().err
    found = re.search(r"(\d+) train / (\d+) held out: (\S+)", err)
    assert found, err
    n_train, n_held = int(found.group(1)), int(found.group(2))
    assert n_train + n_held == N_ROWS and 0 < n_held <= n_train
    assert found.group(3) == (small["completions"] if "completions" in name else small["pairs"])
    assert is_done(out)


def test_check_held_out_names_the_largest_eval_size_that_passes():
    # 6 pairs per prompt: whole prompts are held out, so --eval_size N may hold out more than N
    rows = [dict(prompt_ids=[p, 7]) for p in range(43) for _ in range(6)]  # 258 rows
    seed = 3
    with pytest.raises(ValueError, match=r"--eval_size 200 holds out \d+ of the 258 rows of "
                                         r"x\.jsonl") as e:
        check_held_out(rows, split_pairs(rows, 200, seed)[1], 200, seed, "x.jsonl")
    best = int(re.search(r"pass --eval_size (\d+) or less", str(e.value)).group(1))
    assert 2 * len(split_pairs(rows, best, seed)[1]) <= len(rows)  # it passes ...
    assert 2 * len(split_pairs(rows, best + 1, seed)[1]) > len(rows)  # ... and one more fails
    check_held_out(rows, split_pairs(rows, best, seed)[1], best, seed, "x.jsonl")
    check_held_out(rows, [], 0, seed, "x.jsonl")  # nothing held out: nothing to refuse


def test_label_objective_prints_its_split_and_holds_out_from_the_test_split(small, capsys):
    """The label classifier's held-out reviews come from the test split, not from its training
    reviews: more held out than trained on is no shortage there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = small["root"] / "reviews"
    folder.mkdir()
    for split, n in (("train", 16), ("test", 40)):
        pq.write_table(pa.Table.from_pylist([dict(text=f"Review {i}: a good film.", label=i % 2)
                                             for i in range(n)]),
                       folder / f"{split}-00000-of-00001.parquet")
    out = str(small["root"] / "label")
    run_main(reward.train, reward.RMConfig, [
        "--objective", "label", "--init", small["init"], "--dataset", str(folder), "--out_dir",
        out, "--eval_size", "32", "--epochs", "1", *TINY])
    assert f"16 train / 32 held out: {folder} (held out: its test split)" in \
        capsys.readouterr().err
    assert is_done(out)
