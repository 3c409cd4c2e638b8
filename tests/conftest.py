"""Shared fixtures: tiny models and files in the real formats, made on the fly."""

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
