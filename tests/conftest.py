"""Shared fixtures: tiny models and files in the real formats, made on the fly; the tiny pipeline
(SFT -> ground truth -> pairs) that later stages start from, built once per session; and the
filter that leaves the wall-clock fields out when two runs' logs are compared."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("MPLBACKEND", "Agg")
# GPT-2's BPE files for tiktoken, offline, when the shared copy sits beside the checkout
_CACHE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tiktoken-cache")
if os.path.isdir(_CACHE):
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.realpath(_CACHE))

import pytest  # noqa: E402
import torch  # noqa: E402

LN_WEIGHTS = ("ln_1.weight", "ln_2.weight", "ln_f.weight")


def randomize_(model, seed: int = 0, std: float = 0.2):
    """Give every parameter (biases and LayerNorms too) a random value, so that a loader that mixes
    up two tensors cannot go unnoticed, and logits spread enough for greedy decoding to be stable
    and varied. Works on our GPT and on transformers' GPT2LMHeadModel (same parameter names)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head/wte counted once
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(1 + noise if name.endswith(LN_WEIGHTS) else noise)
    return model


@pytest.fixture
def tiny_gpt():
    """Factory for our GPT with random weights: tiny_gpt(vocab_size=..., ...)."""
    from model import GPT, GPTConfig

    def make(seed=0, std=0.2, **kw):
        kw = dict(dict(block_size=64, vocab_size=101, n_layer=2, n_head=2, n_embd=32), **kw)
        torch.manual_seed(seed)
        return randomize_(GPT(GPTConfig(**kw)), seed, std).eval()

    return make


@pytest.fixture
def hf_gpt2(tmp_path):
    """Factory for transformers' GPT2LMHeadModel with random weights, saved with its own
    save_pretrained: returns (folder, model). EOS is None, so transformers never stops early and
    our loader falls back to id 50256, outside these vocabularies."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(name="hf", seed=0, std=0.2, **kw):
        kw = dict(dict(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=2), **kw)
        cfg = GPT2Config(**kw, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         bos_token_id=None, eos_token_id=None)
        torch.manual_seed(seed)
        model = randomize_(GPT2LMHeadModel(cfg), seed, std).eval()
        folder = str(tmp_path / name)
        model.save_pretrained(folder)
        return folder, model

    return make


@pytest.fixture(scope="session")
def compact_tok():
    """The tiny preset's tokenizer: GPT-2's BPE remapped to the synthetic corpus' ids."""
    from data import Tokenizer, synthetic_vocab

    return Tokenizer(synthetic_vocab())


# ----------------------------------------------------------------------------- logs


def without_timing(rows):
    """Log rows without the fields that measure wall time: tokens_per_s (every script's log) and
    every time/... key (PPO's time/rollout and time/update). The rest of a row is what two runs of
    the same seed and config must agree on exactly."""
    return [{k: v for k, v in r.items() if k != "tokens_per_s" and not k.startswith("time/")}
            for r in rows]


# ----------------------------------------------------------------------------- the tiny pipeline

SFT_TINY = dict(init="scratch", dataset="synthetic", steps=150, batch_size=32, micro_batch=32,
                lr=3e-3, warmup=20, eval_every=75, save_every=75, eval_size=64, n_layer=2,
                n_head=2, n_embd=64, device="cpu")
GT_TRAIN_REVIEWS = 6400  # the label classifier sees the first 6400 train reviews: 200 steps of 32
PAIRS_TINY = dict(dataset="synthetic", n_prefixes=96, chunk=32, device="cpu")


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """The inputs of every later stage, built once per session on the synthetic corpus: SFT from
    scratch (150 steps, `sft_cfg`), a label classifier trained from it as the ground truth
    (reward.train objective="label", one epoch over 6400 reviews) and 96 prefixes' pairs sampled
    from the SFT model and scored by the classifier (3 chunks of 32, `pairs_cfg`). Tests leave
    these files as they are; DPO runs on `pairs` cache reference log-probs beside it."""
    import types

    import pairs
    import reward
    import sft
    from data import load_reviews, load_tokenizer
    from model import gpt_folder

    root = tmp_path_factory.mktemp("pipeline")
    p = types.SimpleNamespace(root=root, sft=str(root / "sft"), gt=str(root / "gt"),
                              pairs_dir=str(root / "pairs"))
    p.pairs = os.path.join(p.pairs_dir, "pairs.jsonl")
    p.sft_cfg = sft.SFTConfig(out_dir=p.sft, **SFT_TINY)
    p.sft_log = sft.main(p.sft_cfg)

    def fewer_reviews(source, split):  # one epoch of the full 20k reviews would take 625 steps
        texts, labels = load_reviews(source, split)
        return (texts[:GT_TRAIN_REVIEWS], labels[:GT_TRAIN_REVIEWS]) if split == "train" else \
            (texts, labels)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reward, "load_reviews", fewer_reviews)
        p.gt_log = reward.train(reward.RMConfig(
            out_dir=p.gt, init=p.sft, objective="label", dataset="synthetic", epochs=1,
            batch_size=32, micro_batch=32, lr=1e-3, warmup=20, max_len=64, eval_size=256,
            eval_every=100, save_every=1000, device="cpu"))
    p.pairs_cfg = pairs.PairsConfig(out_dir=p.pairs_dir, init=p.sft, ground_truth=p.gt,
                                    **PAIRS_TINY)
    p.pairs_log = pairs.main(p.pairs_cfg)
    p.sft_ckpt = gpt_folder(p.sft)
    p.tok = load_tokenizer(p.sft_ckpt)
    return p


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): an unreachable endpoint."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_cat_tldr(root) -> tuple[str, str]:
    """24 TL;DR-layout posts about cats as hub-layout parquet (the comparisons in cmp/, the SFT set
    in sft/), converted by hh_tldr/preferences.py: (pairs file, completions file) on GPT-2's BPE."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hh_tldr.preferences import PreferencesConfig
    from hh_tldr.preferences import main as convert

    posts = [f"SUBREDDIT: r/cats TITLE: cat {i} POST: my cat number {i} sleeps all day."
             for i in range(24)]
    comparisons = [dict(prompt=p, chosen="TL;DR: my cat sleeps", rejected="TL;DR: dogs bark")
                   for p in posts]
    sft_rows = [dict(prompt=p + "\nTL;DR:", label=" my cat sleeps") for p in posts]
    for name, rows in (("cmp", comparisons), ("sft", sft_rows)):
        os.makedirs(os.path.join(root, name))
        pq.write_table(pa.Table.from_pylist(rows), os.path.join(root, name, "train-00000.parquet"))
    pairs, completions = os.path.join(root, "pairs.jsonl"), os.path.join(root, "completions.jsonl")
    assert convert(PreferencesConfig(dataset=os.path.join(root, "cmp"), out=pairs))["format"] \
        == "tldr"
    assert convert(PreferencesConfig(dataset=os.path.join(root, "sft"),
                                     out=completions))["format"] == "tldr_sft"
    return pairs, completions
