"""The hand-written RoBERTa ground truth against transformers: tokenizer ids, logits, loading.

siebert's files cannot be downloaded here, so a test vocabulary is built from GPT-2's encoder.json
(tiktoken's cached copy) with shuffled ids and RoBERTa's special tokens, and a tiny random
RobertaForSequenceClassification stands in for RoBERTa-large.
"""

import json
import os
import random
import shutil

import pytest
import torch

import roberta

TEXTS = [
    "This movie was wonderful.",
    "  Terrible acting, worse plot.  ",
    "I've seen better.\nMuch better.\n\n",
    "Ok",
    "",
]
TRICKY = [
    "plain text, nothing special",
    " leading space", "trailing space ", "multiple   spaces  inside", "   ", " ",
    "tabs\tand\r\nwindows newlines\n", "\n\nstarts with newlines",
    "Café, naïve, résumé — “quotes” … and ß", "emoji 😀👍🏽 and flags 🇫🇷",
    "日本語の映画は素晴らしい",
    "a<br />b<br /><br />c", "the literal <|endoftext|> token", "numbers 1234567 3.14",
    "don't won't I'll we've they're she's I'm he'd", "ALL CAPS!!! ???", "\u00a0nbsp\u2009thin",
]


def _cache_file(name: str) -> str:
    folder = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not folder or not os.path.isdir(folder):
        pytest.skip("TIKTOKEN_CACHE_DIR (GPT-2's cached encoder.json and vocab.bpe) is not set")
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        pytest.skip(f"{path} (GPT-2's {name}) is not in TIKTOKEN_CACHE_DIR")
    return path


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    """vocab.json (GPT-2's tokens with shuffled ids, <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last,
    like RoBERTa's) and merges.txt (GPT-2's vocab.bpe)."""
    with open(_cache_file("6c7ea1a7e38e3a7f062df639a5b80947f075ffe6"), encoding="utf-8") as f:
        encoder = json.load(f)  # GPT-2's encoder.json
    merges = _cache_file("6d1cbeee0f20b3d9449abfede4726ed8212e3aee")  # GPT-2's vocab.bpe
    tokens = sorted(encoder, key=encoder.get)
    random.Random(0).shuffle(tokens)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({t: i + 4 for i, t in enumerate(tokens)})
    vocab["<mask>"] = len(vocab)
    folder = tmp_path_factory.mktemp("vocab")
    with open(folder / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    shutil.copy(merges, folder / "merges.txt")
    return folder


@pytest.fixture(scope="module")
def hf_tok(vocab_dir):
    from transformers import RobertaTokenizer

    return RobertaTokenizer.from_pretrained(str(vocab_dir))


@pytest.fixture(scope="module")
def our_tok(vocab_dir):
    with open(vocab_dir / "vocab.json", encoding="utf-8") as f:
        return roberta.RobertaTokenizer(json.load(f), max_len=512)


def make_hf_model(id2label=None, seed=0):
    """A tiny random RobertaForSequenceClassification with siebert's shape of config."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    id2label = id2label or {0: "NEGATIVE", 1: "POSITIVE"}
    torch.manual_seed(seed)
    cfg = RobertaConfig(
        vocab_size=50262, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=514, type_vocab_size=1,
        layer_norm_eps=1e-5, pad_token_id=1, id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = RobertaForSequenceClassification(cfg).eval()
    with torch.no_grad():  # larger random weights than HF's init, so that texts score differently
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            else:
                p.normal_(0.0, 0.05 if name.endswith("bias") else 0.3)
    return model


def save_folder(model, folder, vocab_dir, weights="safetensors"):
    """config.json + vocab.json + model.safetensors (save_pretrained) or pytorch_model.bin (a
    torch.save state dict with the buffers older transformers saved)."""
    model.save_pretrained(str(folder))
    if weights == "bin":
        os.remove(folder / "model.safetensors")
        sd = dict(model.state_dict())
        sd["roberta.embeddings.position_ids"] = torch.arange(514)[None]
        torch.save(sd, folder / "pytorch_model.bin")
    shutil.copy(vocab_dir / "vocab.json", folder / "vocab.json")
    return folder


def hf_probs(model, hf_tok, texts):
    enc = hf_tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    return logits, logits.softmax(-1)


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_ids_match_transformers(our_tok, hf_tok):
    for text in TEXTS + TRICKY:
        assert our_tok.encode(text) == hf_tok(text)["input_ids"], repr(text)


def test_tokenizer_random_strings_match_transformers(our_tok, hf_tok):
    rng = random.Random(0)
    pool = list("abcXYZ019 .,'!?-_\"") + [" ", "  ", "\n", "\t", "é", "ß", "😀", "日", "'s", "'ll"]
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    assert our_tok.encode_batch(texts) == hf_tok(texts)["input_ids"]


def test_tokenizer_truncates_like_transformers(our_tok, hf_tok):
    review = " ".join(["An unexpectedly moving film, 10/10 would watch again!"] * 80)
    ours = our_tok.encode(review)
    assert len(ours) == 512 and ours[0] == 0 and ours[-1] == 2
    assert ours == hf_tok(review, truncation=True, max_length=512)["input_ids"]


def test_special_token_strings_are_plain_text(our_tok, hf_tok):
    # The one documented difference: transformers turns "<s>", "</s>", "<mask>"... inside a text
    # into special tokens; we encode them as text (as data.Tokenizer does), which is what
    # transformers gives with split_special_tokens=True.
    for text in ["a <s> b </s> c", "x <mask> y", "<pad><unk>"]:
        ours = our_tok.encode(text)
        assert ours == hf_tok(text, split_special_tokens=True)["input_ids"]
        assert ours != hf_tok(text)["input_ids"]


def test_bytes_to_unicode_is_gpt2s_table():
    table = roberta.bytes_to_unicode()
    assert len(set(table.values())) == 256 and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


# ----------------------------------------------------------------------------- parity


def test_logits_match_transformers(tmp_path, vocab_dir, hf_tok):
    hf = make_hf_model()
    scorer = roberta.load_roberta_scorer(str(save_folder(hf, tmp_path, vocab_dir)))
    texts = TEXTS + [" ".join(["long review"] * 400)]  # padding and a truncated text
    ids = scorer.tok.encode_batch(texts)
    x = torch.full((len(ids), max(map(len, ids))), scorer.tok.pad_id)
    for r, row in enumerate(ids):
        x[r, : len(row)] = torch.tensor(row)
    logits, probs = hf_probs(hf, hf_tok, texts)
    with torch.no_grad():
        torch.testing.assert_close(scorer.model(x), logits, atol=1e-4, rtol=0)
    p = scorer(texts)
    torch.testing.assert_close(p, probs[:, 1], atol=1e-4, rtol=0)
    assert p.dtype == torch.float32 and p.shape == (len(texts),)
    assert p.max() - p.min() > 0.3  # the random model tells the texts apart: the check has teeth


def test_pytorch_bin_loads_and_matches(tmp_path, vocab_dir, hf_tok):
    hf = make_hf_model(seed=1)
    folder = save_folder(hf, tmp_path, vocab_dir, weights="bin")
    assert not (folder / "model.safetensors").exists()
    torch.testing.assert_close(roberta.load_roberta_scorer(str(folder))(TEXTS),
                               hf_probs(hf, hf_tok, TEXTS)[1][:, 1], atol=1e-4, rtol=0)
    # with both files, model.safetensors is the one read
    (folder / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    hf.save_pretrained(str(folder))
    roberta.load_roberta_scorer(str(folder))


def test_positive_label_is_read_not_assumed(tmp_path, vocab_dir, hf_tok):
    hf = make_hf_model(id2label={0: "POSITIVE", 1: "NEGATIVE"})
    p = roberta.load_roberta_scorer(str(save_folder(hf, tmp_path, vocab_dir)))(TEXTS)
    torch.testing.assert_close(p, hf_probs(hf, hf_tok, TEXTS)[1][:, 0], atol=1e-4, rtol=0)


def test_positive_label_names():
    assert roberta.positive_label({0: "neg", 1: "pos"}) == 1
    assert roberta.positive_label({0: "Positive", 1: "Negative"}) == 0
    assert roberta.positive_label({0: "negative", 1: "neutral", 2: "positive"}) == 2
    assert roberta.positive_label({0: "LABEL_0", 1: "LABEL_1"}) == 1  # HF's unnamed pair
    assert roberta.id2label({"model_type": "roberta"}) == {0: "LABEL_0", 1: "LABEL_1"}
    with pytest.raises(ValueError, match="positive"):
        roberta.positive_label({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})


# ----------------------------------------------------------------------------- the scorer


def test_scorer_order_and_batching(tmp_path, vocab_dir):
    scorer = roberta.load_roberta_scorer(str(save_folder(make_hf_model(), tmp_path, vocab_dir)))
    texts = ["short", "a much longer text than the others, by far", "mid length text", "x"] * 2
    p1, p3 = scorer(texts, batch_size=1), scorer(texts, batch_size=3, progress=True)
    torch.testing.assert_close(p1, p3, atol=1e-5, rtol=0)
    assert ((p3 > 0) & (p3 < 1)).all()
    alone = torch.cat([scorer([t]) for t in texts])
    torch.testing.assert_close(p3, alone, atol=1e-5, rtol=0)  # input order, padding harmless
    assert scorer([]).shape == (0,)
    with pytest.raises(TypeError, match="list of strings"):
        scorer("one string")


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def good_folder(tmp_path, vocab_dir):
    return save_folder(make_hf_model(), tmp_path / "m", vocab_dir)


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_folder_without_config(good_folder):
    os.remove(good_folder / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        roberta.load_roberta_scorer(str(good_folder))


def test_missing_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        roberta.load_roberta_scorer(str(tmp_path / "nope"))


def test_hub_unreachable_says_pass_a_folder():
    with pytest.raises(OSError, match="local folder"):  # HF_HUB_OFFLINE=1 in conftest
        roberta.load_roberta_scorer("no-such-user/no-such-model")


def test_hub_falls_back_to_pytorch_bin(tmp_path, vocab_dir, monkeypatch):
    # siebert's main branch publishes pytorch_model.bin only: a hub without model.safetensors
    folder = save_folder(make_hf_model(), tmp_path, vocab_dir, weights="bin")
    asked = []

    def fake_hub_download(repo_id, files):
        asked.extend(files)
        if not all((folder / f).exists() for f in files):
            raise OSError(f"could not fetch {repo_id}")
        return str(folder)

    monkeypatch.setattr(roberta, "hub_download", fake_hub_download)
    assert roberta.resolve_roberta("siebert/x") == (str(folder), str(folder / "pytorch_model.bin"))
    assert asked == ["config.json", "vocab.json", "model.safetensors", "pytorch_model.bin"]


def test_wrong_model_type(good_folder):
    _edit_config(good_folder, model_type="gpt2")
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        roberta.load_roberta_scorer(str(good_folder))


def test_no_positive_label(good_folder):
    _edit_config(good_folder, id2label={"0": "sad", "1": "happy"})
    with pytest.raises(ValueError, match="no single 'positive' label"):
        roberta.load_roberta_scorer(str(good_folder))


def test_wrong_key_and_shape_are_named(good_folder):
    from safetensors.torch import load_file, save_file

    sd = load_file(good_folder / "model.safetensors")
    renamed = dict(sd)
    renamed["classifier.out_proj.W"] = renamed.pop("classifier.out_proj.weight")
    save_file(renamed, good_folder / "model.safetensors")
    with pytest.raises(ValueError, match="'classifier.out_proj.W'|'classifier.out_proj.weight'"):
        roberta.load_roberta_scorer(str(good_folder))
    sd["classifier.dense.weight"] = sd["classifier.dense.weight"][:, :16].contiguous()
    save_file(sd, good_folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"shape of 'classifier.dense.weight' is \(32, 16\)"):
        roberta.load_roberta_scorer(str(good_folder))


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_truncated_weights(tmp_path, vocab_dir, weights):
    folder = save_folder(make_hf_model(), tmp_path, vocab_dir, weights=weights)
    path = folder / ("model.safetensors" if weights == "safetensors" else "pytorch_model.bin")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable"):
        roberta.load_roberta_scorer(str(folder))
