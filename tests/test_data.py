"""data.py: tokenizers, IMDb from local files in the hub's layout, prompts, the synthetic corpus,
collate and the pairs file, the training stream."""

import re

import pytest
import torch

import data
from data import (
    GPT2_EOS,
    Protocol,
    Tokenizer,
    check_pairs,
    collate,
    collate_pairs,
    load_reviews,
    load_tokenizer,
    make_prefixes,
    pair_row,
    stream_indices,
    synthetic_vocab,
)

from plumbing import utils
from synthetic import reviews as grammar
from synthetic.reviews import synthetic_reviews

# ----------------------------------------------------------------------------- tokenizer

TEXTS = [
    "This movie was great.",
    "  two  spaces,\ttabs\tand\nnew\n\nlines  ",
    "naïve café — 日本語のレビュー 🎬🍿 ñ",
    "I loved it<|endoftext|>and then it ended",
    "<|endoftext|>",
    "",
    "a<br /><br />b",
]


@pytest.fixture(scope="module")
def gpt2_tok():
    return Tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_gpt2_round_trip(gpt2_tok, text):
    ids = gpt2_tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < gpt2_tok.vocab_size for i in ids)
    assert gpt2_tok.decode(ids) == text


def test_gpt2_special_string_is_plain_text(gpt2_tok):
    assert gpt2_tok.vocab_size == 50257 and gpt2_tok.eos_id == GPT2_EOS
    ids = gpt2_tok.encode("<|endoftext|>")
    assert GPT2_EOS not in ids and len(ids) > 1
    assert GPT2_EOS not in gpt2_tok.encode("The end.<|endoftext|>")
    # the real EOS id decodes to nothing
    assert gpt2_tok.decode(gpt2_tok.encode("The end.") + [GPT2_EOS]) == "The end."
    assert gpt2_tok.decode(torch.tensor(gpt2_tok.encode("tensor ids"))) == "tensor ids"


def test_compact_round_trip_on_synthetic_reviews(compact_tok):
    vocab = synthetic_vocab()
    assert vocab == sorted(set(vocab)) and GPT2_EOS in vocab
    assert compact_tok.vocab_size == len(vocab) + 1 and compact_tok.unk_id == len(vocab)
    assert len(vocab) < 1000  # compact indeed
    for text, _ in synthetic_reviews(300, seed=5):
        ids = compact_tok.encode(text)
        assert compact_tok.unk_id not in ids, text  # the vocabulary covers the corpus
        assert all(0 <= i < compact_tok.unk_id for i in ids)
        assert [vocab[i] for i in ids] == compact_tok.enc.encode_ordinary(text)
        assert compact_tok.decode(ids) == text


def test_compact_eos_and_unknown(compact_tok):
    vocab = synthetic_vocab()
    assert compact_tok.eos_id == vocab.index(GPT2_EOS)
    ids = compact_tok.encode("The acting was great.")
    assert compact_tok.decode(ids + [compact_tok.eos_id]) == "The acting was great."
    odd = compact_tok.encode("Quantum xylophones vs. 日本語 <|endoftext|>")
    assert compact_tok.unk_id in odd
    assert compact_tok.eos_id not in odd
    assert all(0 <= i <= compact_tok.unk_id for i in odd)
    # known words survive next to unknown ones; unknown ids decode to nothing
    mixed = compact_tok.encode("The acting was xylophones")
    assert mixed[-1] == compact_tok.unk_id
    assert compact_tok.decode(mixed) == "The acting was"
    with pytest.raises(ValueError, match="50256"):
        Tokenizer([1, 2, 3])


def test_tokenizer_save_and_load(compact_tok, tmp_path):
    compact_tok.save(str(tmp_path))
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.vocab == compact_tok.vocab
    assert (loaded.eos_id, loaded.unk_id, loaded.vocab_size) == (
        compact_tok.eos_id, compact_tok.unk_id, compact_tok.vocab_size)
    text = synthetic_reviews(1, seed=0)[0][0]
    assert loaded.encode(text) == compact_tok.encode(text)
    # full GPT-2: nothing written, and a folder without compact_vocab.json gives GPT-2's tokenizer
    empty = tmp_path / "full"
    empty.mkdir()
    Tokenizer().save(str(empty))
    assert list(empty.iterdir()) == []
    for folder in (str(empty), None):
        full = load_tokenizer(folder)
        assert full.vocab is None and full.vocab_size == 50257 and full.eos_id == GPT2_EOS


# ----------------------------------------------------------------------------- IMDb

RAW = [
    ("A fine film.<br /><br />I   liked   it a lot.", 1),
    ("Dull.<br/>Very dull.\n\nTruly  awful   acting.", 0),
    ("  <br />Starts with a break and ends with spaces.   ", 1),
    ("Mixed <br> tags<br/>and\ttabs", 0),
]
CLEAN = [
    "A fine film. I liked it a lot.",
    "Dull. Very dull. Truly awful acting.",
    "Starts with a break and ends with spaces.",
    "Mixed tags and tabs",
]
TEST_RAW = [("Another one.<br /><br />Great!", 1), ("Bad  bad  bad.", 0)]


def write_parquet(path, rows, columns=("text", "label")):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({columns[0]: pa.array([t for t, _ in rows], pa.string()),
                      columns[1]: pa.array([y for _, y in rows], pa.int64())})
    pq.write_table(table, str(path))


def imdb_folder(root, splits=("train", "test")):
    """IMDb as the hub stores it: plain_text/{split}-00000-of-00001.parquet."""
    rows = {"train": RAW, "test": TEST_RAW, "unsupervised": [("No label here.", -1)]}
    for split in splits:
        write_parquet(root / "plain_text" / f"{split}-00000-of-00001.parquet", rows[split])
    return str(root)


def test_clean_review():
    assert [data.clean_review(t) for t, _ in RAW] == CLEAN


def test_load_reviews_from_hub_layout_folder(tmp_path):
    folder = imdb_folder(tmp_path / "imdb", ("train", "test", "unsupervised"))
    texts, labels = load_reviews(folder, "train")
    assert texts == CLEAN and labels == [1, 0, 1, 0]
    assert all(type(y) is int for y in labels)
    texts, labels = load_reviews(folder, "test")
    assert texts == ["Another one. Great!", "Bad bad bad."] and labels == [1, 0]


def test_load_reviews_from_sharded_flat_folder(tmp_path):
    write_parquet(tmp_path / "train-00000-of-00002.parquet", RAW[:2])
    write_parquet(tmp_path / "train-00001-of-00002.parquet", RAW[2:])
    write_parquet(tmp_path / "test-00000-of-00001.parquet", TEST_RAW)
    texts, labels = load_reviews(str(tmp_path), "train")
    assert texts == CLEAN and labels == [1, 0, 1, 0]


def test_load_reviews_from_single_parquet_file(tmp_path):
    path = tmp_path / "reviews.parquet"
    write_parquet(path, RAW)
    for split in ("train", "test"):  # a single file is the split asked for
        texts, labels = load_reviews(str(path), split)
        assert texts == CLEAN and labels == [1, 0, 1, 0]


def test_load_reviews_from_save_to_disk(tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"text": [t for t, _ in rows],
                                           "label": [y for _, y in rows]})
        for split, rows in (("train", RAW), ("test", TEST_RAW))})
    dd.save_to_disk(str(tmp_path / "saved"))
    texts, labels = load_reviews(str(tmp_path / "saved"), "train")
    assert texts == CLEAN and labels == [1, 0, 1, 0]
    texts, labels = load_reviews(str(tmp_path / "saved"), "test")
    assert labels == [1, 0] and texts[0] == "Another one. Great!"


@pytest.mark.parametrize("columns,missing", [(("text", "sentiment"), "'label'"),
                                             (("review", "label"), "'text'")])
def test_load_reviews_missing_column(tmp_path, columns, missing):
    write_parquet(tmp_path / "plain_text" / "train-00000-of-00001.parquet", RAW, columns)
    with pytest.raises(ValueError, match=f"missing {missing}"):
        load_reviews(str(tmp_path), "train")


def test_load_reviews_folder_without_split(tmp_path):
    folder = imdb_folder(tmp_path / "imdb", ("train",))
    with pytest.raises(FileNotFoundError, match=r"no test-\*\.parquet"):
        load_reviews(folder, "test")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no train"):
        load_reviews(str(empty), "train")


def test_load_reviews_save_to_disk_without_split(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"text": ["a"], "label": [1]})}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises((ValueError, FileNotFoundError), match="test"):
        load_reviews(str(tmp_path / "saved"), "test")


def test_load_reviews_synthetic():
    texts, labels = load_reviews("synthetic", "test")
    assert len(texts) == len(labels) == 2000
    assert (texts[0], labels[0]) == synthetic_reviews(2000, 1)[0]
    train, _ = load_reviews("synthetic", "train")
    assert not set(train[:50]) & set(texts)  # different seeds, different reviews


# ----------------------------------------------------------------------------- prefixes


def test_make_prefixes(compact_tok):
    texts = [t for t, _ in synthetic_reviews(400, seed=2)]
    encoded = [compact_tok.encode(t) for t in texts]
    prefixes = make_prefixes(texts, 300, seed=0, tok=compact_tok)
    assert len(prefixes) == 300
    assert {len(p) for p in prefixes} == set(range(2, 9))  # uniform over 2..8: every length
    for p in prefixes:
        assert any(e[: len(p)] == p for e in encoded)  # the start of some review
    assert make_prefixes(texts, 300, seed=0, tok=compact_tok) == prefixes
    assert make_prefixes(texts, 300, seed=1, tok=compact_tok) != prefixes
    short = make_prefixes(texts, 100, seed=0, tok=compact_tok, protocol=Protocol(min_prefix=3,
                                                                                 max_prefix=4))
    assert {len(p) for p in short} == {3, 4}


def test_make_prefixes_distinct_reviews(gpt2_tok):
    texts = [f"Review number {i} says the film was fine." for i in range(50)]
    prefixes = make_prefixes(texts, 50, seed=3, tok=gpt2_tok, protocol=Protocol(min_prefix=4))
    # "Review number {i}" is 3-4 tokens: with >= 4 tokens every prefix names its review
    decoded = [gpt2_tok.decode(p) for p in prefixes]
    numbers = [int(re.match(r"Review number (\d+)", d).group(1)) for d in decoded]
    assert sorted(numbers) == list(range(50))


def test_make_prefixes_too_many(compact_tok):
    texts = [t for t, _ in synthetic_reviews(10, seed=0)]
    with pytest.raises(ValueError, match="11 prefixes but the split has 10"):
        make_prefixes(texts, 11, seed=0, tok=compact_tok)


def test_protocol_sampling_arguments():
    p = Protocol()
    assert (p.min_prefix, p.max_prefix) == (2, 8)
    assert p.sampling() == dict(max_new_tokens=48, temperature=1.0, top_k=None, top_p=None)


# ----------------------------------------------------------------------------- synthetic corpus


def words_of(text):
    return set(re.findall(r"[a-z]+", text.lower()))


def test_synthetic_reviews_deterministic_and_balanced():
    a = synthetic_reviews(2000, seed=0)
    assert a == synthetic_reviews(2000, seed=0)
    assert a != synthetic_reviews(2000, seed=1)
    assert len(a) == 2000 and {y for _, y in a} == {0, 1}
    assert 0.45 < sum(y for _, y in a) / len(a) < 0.55
    assert len({t for t, _ in a}) > 1900  # varied texts
    assert all(t and t[0].isupper() and t.endswith(".") for t, _ in a)


def test_synthetic_reviews_mix_sentiment():
    pos, neg = set(grammar.POSITIVE), set(grammar.NEGATIVE)
    reviews = synthetic_reviews(2000, seed=0)
    both = [bool(words_of(t) & pos) and bool(words_of(t) & neg) for t, _ in reviews]
    assert 0.25 < sum(both) / len(both) < 0.9  # mixed, but not everywhere

    def balance(label):  # positive minus negative words, averaged over reviews of a label
        rows = [words_of(t) for t, y in reviews if y == label]
        return sum(len(w & pos) - len(w & neg) for w in rows) / len(rows)

    assert balance(1) > 0.5 and balance(0) < -0.5  # the label still shows


def test_synthetic_p_agree_one_is_unmixed():
    pos, neg = set(grammar.POSITIVE), set(grammar.NEGATIVE)
    for text, y in synthetic_reviews(300, seed=0, p_agree=1.0):
        assert not words_of(text) & (neg if y else pos)


# ----------------------------------------------------------------------------- collate, pairs


def test_collate_right_pads_and_masks_completions():
    ids, mask = collate([[1, 2], [3], [4, 5, 6]], [[7, 8, 9], [10], [11, 12]], pad_id=0)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.tolist() == [[1, 2, 7, 8, 9], [3, 10, 0, 0, 0], [4, 5, 6, 11, 12]]
    assert mask.tolist() == [[False, False, True, True, True],
                             [False, True, False, False, False],
                             [False, False, False, True, True]]


def test_collate_random_shapes():
    g = torch.Generator().manual_seed(0)

    def rand_list(lo, hi):
        n = int(torch.randint(lo, hi, (1,), generator=g))
        return torch.randint(1, 50, (n,), generator=g).tolist()

    prompts = [rand_list(1, 9) for _ in range(16)]
    completions = [rand_list(1, 20) for _ in range(16)]
    ids, mask = collate(prompts, completions, pad_id=99)
    assert ids.shape == mask.shape == (16, max(len(p) + len(c)
                                               for p, c in zip(prompts, completions)))
    for row, m, p, c in zip(ids.tolist(), mask.tolist(), prompts, completions):
        n = len(p) + len(c)
        assert row[:n] == p + c and row[n:] == [99] * (len(row) - n)
        assert m == [len(p) <= j < n for j in range(len(row))]


def test_collate_empty_prompt_never_scores_first_token():
    ids, mask = collate([[], []], [[5, 6, 7], [8, 9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 9, 0]]
    assert mask.tolist() == [[False, True, True], [False, True, False]]


def make_rows(tok):
    enc = tok.encode
    return [
        pair_row(enc("The acting"), enc(" was great."), enc(" was awful."), 0.9, 0.1, tok),
        pair_row(enc("I"), enc(" loved the music."), enc(" hated it."), 0.8, 0.3, tok),
        pair_row(enc("This film was"), enc(" superb"), enc(" dull and boring."), 0.7, 0.2, tok),
    ]


def test_collate_pairs_chosen_then_rejected(compact_tok):
    rows = make_rows(compact_tok)
    ids, mask = collate_pairs(rows, pad_id=compact_tok.eos_id)
    assert ids.shape[0] == 6 and mask.shape == ids.shape
    halves = (("chosen_ids", range(3)), ("rejected_ids", range(3, 6)))
    for key, idx in halves:
        for r, i in zip(rows, idx):
            seq = r["prompt_ids"] + r[key]
            assert ids[i, : len(seq)].tolist() == seq
            assert (ids[i, len(seq):] == compact_tok.eos_id).all()
            assert mask[i].nonzero().flatten().tolist() == list(range(len(r["prompt_ids"]),
                                                                      len(seq)))


def test_pairs_file_round_trip(compact_tok, tmp_path):
    rows = make_rows(compact_tok)
    assert set(rows[0]) == set(data.PAIR_KEYS)
    assert rows[0]["prompt"] == "The acting" and rows[0]["chosen"] == " was great."
    assert isinstance(rows[0]["reward_chosen"], float)
    path = str(tmp_path / "pairs.jsonl")
    utils.write_jsonl(path, rows)
    back = check_pairs(utils.read_jsonl(path), path)
    assert back == rows


def test_pair_row_keeps_exact_ids(gpt2_tok):
    # ids that re-encoding would merge differently: stored as sampled
    chosen = [gpt2_tok.encode(" the")[0], gpt2_tok.encode("re")[0]]
    row = pair_row([464], chosen, [318], 1.0, 0.0, gpt2_tok)
    assert row["chosen_ids"] == chosen
    assert gpt2_tok.encode(row["chosen"]) != chosen


def test_check_pairs_errors(compact_tok, tmp_path):
    path = str(tmp_path / "pairs.jsonl")
    rows = make_rows(compact_tok)
    del rows[1]["reward_rejected"]
    with pytest.raises(ValueError, match=r"pairs\.jsonl:2: .*reward_rejected"):
        check_pairs(rows, path)
    rows = make_rows(compact_tok)
    rows[2]["chosen_ids"] = []
    with pytest.raises(ValueError, match=r"pairs\.jsonl:3: empty"):
        check_pairs(rows, path)
    with pytest.raises(ValueError, match="pairs.jsonl: no such file"):
        check_pairs([], path)
    open(path, "w").close()
    with pytest.raises(ValueError, match="no pairs"):
        check_pairs([], path)
    rows = make_rows(compact_tok)
    rows[0]["prompt_ids"] = [1, "2"]
    with pytest.raises(ValueError, match=r"pairs\.jsonl:1: prompt_ids must be a list of"):
        check_pairs(rows, path)
    rows = make_rows(compact_tok)
    rows[1]["reward_chosen"] = "high"
    with pytest.raises(ValueError, match=r"pairs\.jsonl:2: reward_chosen must be a finite"):
        check_pairs(rows, path)
    rows = make_rows(compact_tok)
    rows[1]["reward_chosen"] = rows[1]["reward_rejected"] = None  # human labels: no reward
    rows[2]["chosen"] = 3
    with pytest.raises(ValueError, match=r"pairs\.jsonl:3: chosen must be a string"):
        check_pairs(rows, path)


# ----------------------------------------------------------------------------- held-out split


def split_rows(n_prompts=40, seed=0):
    """Pair rows of n_prompts distinct prompts with 1..6 pairs each (pairs.py writes up to 6)."""
    import random

    rng = random.Random(seed)
    prompts = {tuple(rng.randrange(1000) for _ in range(rng.randint(2, 8)))
               for _ in range(n_prompts)}
    rows = [dict(prompt_ids=list(p), chosen_ids=[1], rejected_ids=[2])
            for p in sorted(prompts) for _ in range(rng.randint(1, 6))]
    rng.shuffle(rows)
    return rows


def held_prompts(rows, idx):
    return {tuple(rows[i]["prompt_ids"]) for i in idx}


def test_split_pairs_holds_out_whole_prompts_at_random():
    from data import split_pairs

    rows = split_rows()
    prompts = sorted({tuple(r["prompt_ids"]) for r in rows})
    ever_held = set()
    for seed in range(50):
        train, held = split_pairs(rows, 30, seed)
        assert sorted(train + held) == list(range(len(rows)))  # every pair on one side
        assert not held_prompts(rows, train) & held_prompts(rows, held)  # no prompt on both
        assert 30 <= len(held) < 30 + 6  # whole prompts until about eval_size pairs
        assert (train, held) == split_pairs(rows, 30, seed)  # deterministic for a seed
        ever_held |= held_prompts(rows, held)
    # a random choice, not the lexicographically largest prompts: every prompt gets held out
    assert ever_held == set(prompts)
    assert split_pairs(rows, 30, 0)[1] != split_pairs(rows, 30, 1)[1]
    # the choice depends on the prompts and the seed, not on the order of the file
    rev = rows[::-1]
    assert held_prompts(rev, split_pairs(rev, 30, 0)[1]) == held_prompts(rows,
                                                                        split_pairs(rows, 30, 0)[1])
    # nested: a smaller eval_size holds out a subset of a larger one's prompts
    assert held_prompts(rows, split_pairs(rows, 10, 0)[1]) <= held_prompts(
        rows, split_pairs(rows, 30, 0)[1])


def test_split_pairs_edge_cases():
    from data import split_pairs

    rows = split_rows()
    assert split_pairs(rows, 0, 0) == (list(range(len(rows))), [])
    train, held = split_pairs(rows, 10 ** 6, 0)  # never everything: one prompt is kept
    assert len(held_prompts(rows, train)) == 1 and held
    one = [dict(prompt_ids=[5, 6], chosen_ids=[1], rejected_ids=[2])] * 3
    assert split_pairs(one, 2, 0) == ([0, 1, 2], [])


def test_preferred_ft_trains_on_the_chosen_side_of_every_pair(compact_tok, tmp_path):
    """Preferred-FT is SFT on the chosen completions of the preference dataset (paper §6): with
    4 ranked samples per prompt and all 6 pairs, the best sample is chosen in 3 pairs, the second
    in 2, the third in 1 and the worst in none, and SFT sees them in that proportion."""
    import pairs
    import sft

    tok = compact_tok
    comps = [[20 + i, tok.eos_id] for i in range(4)]
    rewards = [0.9, 0.7, 0.4, 0.1]
    rows = []
    for k in range(8):  # 8 prompts, 6 pairs each
        prompt = [30, 40 + k]
        rows += [{"prefix_index": k, **r} for r in pairs.pairs_of(prompt, comps, rewards, tok)[0]]
    assert len(rows) == 48
    path = str(tmp_path / "pairs.jsonl")
    utils.write_jsonl(path, rows)

    cfg = sft.SFTConfig(pairs=path, eval_size=0)
    (train_p, train_c), (held_p, held_c) = sft.build_data(cfg, tok)
    assert len(train_p) == len(train_c) == 48 and held_p == []  # one sequence per pair
    assert [train_c.count(c) for c in comps] == [8 * 3, 8 * 2, 8 * 1, 0]  # 3 : 2 : 1
    assert sorted(zip(map(tuple, train_p), map(tuple, train_c))) == sorted(
        (tuple(r["prompt_ids"]), tuple(r["chosen_ids"])) for r in rows)

    # held out: whole prompts, and the chosen side of each of their pairs too
    (train_p, train_c), (held_p, held_c) = sft.build_data(
        sft.SFTConfig(pairs=path, eval_size=12), tok)
    assert len(held_p) == 12 and len(train_p) == 36
    assert not set(map(tuple, train_p)) & set(map(tuple, held_p))
    assert [held_c.count(c) for c in comps] == [2 * 3, 2 * 2, 2 * 1, 0]


# ----------------------------------------------------------------------------- stream


@pytest.mark.parametrize("n,batch_size", [(10, 4), (7, 7), (5, 3), (3, 8), (1, 2)])
def test_stream_indices_epochs_are_permutations(n, batch_size):
    epochs = 4
    steps = -(-n * epochs // batch_size)
    stream = [i for s in range(1, steps + 1) for i in stream_indices(n, batch_size, s, seed=0)]
    assert all(len(stream_indices(n, batch_size, s, 0)) == batch_size
               for s in range(1, steps + 1))
    for e in range(epochs):
        assert sorted(stream[e * n: (e + 1) * n]) == list(range(n))
    # contiguous: the same stream whatever the batch size
    ones = [stream_indices(n, 1, s, seed=0)[0] for s in range(1, len(stream) + 1)]
    assert stream == ones


def test_stream_indices_deterministic_and_seeded():
    a = [stream_indices(50, 8, s, seed=0) for s in range(1, 21)]  # steps count from 1
    assert a == [stream_indices(50, 8, s, seed=0) for s in range(1, 21)]
    assert a != [stream_indices(50, 8, s, seed=1) for s in range(1, 21)]
    epoch0, epoch1 = sum(a, [])[:50], sum(a, [])[50:100]
    assert epoch0 != epoch1 and epoch0 != list(range(50))  # shuffled, differently each epoch


def test_lr_at_counts_steps_from_one():
    from plumbing.utils import lr_at

    assert [lr_at(s, 1.0, 4) for s in (1, 2, 3, 4, 5, 100)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = [lr_at(s, 1.0, 2, total=10) for s in range(1, 11)]
    assert cosine[:3] == [0.5, 1.0, 1.0]  # step 3: the first of the decay, still the peak
    assert all(a > b for a, b in zip(cosine[2:], cosine[3:]))  # then down ...
    assert abs(lr_at(11, 1.0, 2, total=10) - 0.1) < 1e-12  # ... to 10 % after the last step
