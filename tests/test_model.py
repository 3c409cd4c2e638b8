"""model.py: parity with transformers' GPT-2, weight files in and out, the KV cache, generation,
sampling filters and log-probs, and the errors a user sees for bad checkpoints."""

import json
import os

import pytest
import torch

from model import GPT, KVCache, next_token_probs, token_logprobs

from plumbing.speed import FastGPT, Linear, sample_index, speed_up

# Different depth, width, heads, vocabulary, context and LayerNorm epsilon.
HF_CONFIGS = [
    dict(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=2),
    dict(vocab_size=257, n_positions=128, n_embd=48, n_layer=3, n_head=4, layer_norm_epsilon=1e-6),
    dict(vocab_size=64, n_positions=32, n_embd=64, n_layer=1, n_head=8),
]
CONFIG_IDS = ["L2-H2-C32-V101", "L3-H4-C48-V257", "L1-H8-C64-V64"]


def random_ids(vocab_size, B, T, seed=0):
    return torch.randint(0, vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(ids).logits


def our_logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw)


def greedy_by_full_forward(model, prompt, n):
    """Greedy continuation with no cache: the whole sequence through the model at every step."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(our_logits(model, torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


def write_hub_style(folder, hf_model):
    """The hub files' naming: no `transformer.` prefix, causal-mask buffers included."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    cfg = hf_model.config
    n = cfg.n_positions
    sd = {k.removeprefix("transformer."): v.detach().clone().contiguous()
          for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    for i in range(cfg.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.uint8)).view(1, 1, n, n)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f)
    return sd


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("kw", HF_CONFIGS, ids=CONFIG_IDS)
def test_from_pretrained_matches_transformers_logits(hf_gpt2, kw):
    folder, hf = hf_gpt2(**kw)
    model = GPT.from_pretrained(folder).eval()
    assert model.config.n_layer == kw["n_layer"] and model.config.n_head == kw["n_head"]
    assert model.config.block_size == kw["n_positions"]
    assert model.config.layer_norm_epsilon == kw.get("layer_norm_epsilon", 1e-5)
    ids = random_ids(kw["vocab_size"], 3, min(40, kw["n_positions"]))
    ref, ours = hf_logits(hf, ids), our_logits(model, ids)
    assert ours.shape == ref.shape == (3, ids.size(1), kw["vocab_size"])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", HF_CONFIGS[:2], ids=CONFIG_IDS[:2])
def test_greedy_generation_matches_transformers(hf_gpt2, kw):
    folder, hf = hf_gpt2(**kw)
    model = GPT.from_pretrained(folder).eval()
    assert model.config.eos_token_id >= kw["vocab_size"]  # EOS can never be produced: no stop
    seen = set()
    for prompt in ([3, 17, 42], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9]):
        tokens, mask = model.generate([prompt], 20, temperature=0)
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                              dtype=torch.long), do_sample=False, max_new_tokens=20,
                              min_new_tokens=20, pad_token_id=0)
        ref = ref[0, len(prompt):].tolist()
        assert len(ref) == 20
        assert tokens[0].tolist() == ref
        assert mask.all()
        seen.update(ref)
    assert len(seen) > 5  # varied continuations, not one token repeated


@pytest.mark.parametrize("kw", [dict(), dict(n_layer=3, n_head=4, n_embd=48, vocab_size=257,
                                             block_size=128, layer_norm_epsilon=1e-6)])
def test_save_pretrained_loads_in_transformers(tiny_gpt, tmp_path, kw):
    from transformers import GPT2LMHeadModel

    model = tiny_gpt(**kw)
    model.save_pretrained(str(tmp_path / "ckpt"))
    hf, info = GPT2LMHeadModel.from_pretrained(str(tmp_path / "ckpt"), output_loading_info=True)
    hf.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    ids = random_ids(model.config.vocab_size, 2, 30, seed=1)
    torch.testing.assert_close(hf_logits(hf, ids), our_logits(model, ids), atol=1e-5, rtol=0)
    # and back into our model, exactly
    again = GPT.from_pretrained(str(tmp_path / "ckpt")).eval()
    assert again.config == model.config
    assert torch.equal(our_logits(again, ids), our_logits(model, ids))


@pytest.mark.parametrize("kw", HF_CONFIGS[:2], ids=CONFIG_IDS[:2])
def test_hub_naming_with_mask_buffers_loads(hf_gpt2, tmp_path, kw):
    _, hf = hf_gpt2(**kw)
    sd = write_hub_style(tmp_path / "hub", hf)
    assert "h.0.attn.bias" in sd and "wte.weight" in sd and not any(
        k.startswith("transformer.") for k in sd)
    model = GPT.from_pretrained(str(tmp_path / "hub")).eval()
    ids = random_ids(kw["vocab_size"], 2, 25, seed=2)
    torch.testing.assert_close(our_logits(model, ids), hf_logits(hf, ids), atol=1e-5, rtol=0)


def test_lm_head_tied_key_accepted_when_equal(hf_gpt2):
    folder, hf = hf_gpt2()
    model = GPT(GPT.from_pretrained(folder).config)
    sd = {k: v.clone() for k, v in hf.state_dict().items()}  # "transformer." names + lm_head
    sd["lm_head.weight"] = sd["transformer.wte.weight"].clone()
    model.load_hf_state_dict(sd)
    ids = random_ids(101, 2, 12, seed=3)
    torch.testing.assert_close(our_logits(model.eval(), ids), hf_logits(hf, ids), atol=1e-5, rtol=0)
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    with pytest.raises(ValueError, match="lm_head.weight"):
        model.load_hf_state_dict(sd)


# ----------------------------------------------------------------------------- bad checkpoints


def test_unknown_model_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder called gpt3 here
    with pytest.raises(ValueError, match="'gpt3' is neither a folder nor one of gpt2, "):
        GPT.from_pretrained("gpt3")


def test_folder_without_config_json(hf_gpt2):
    folder, _ = hf_gpt2()
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        GPT.from_pretrained(folder)


def test_folder_without_weights(hf_gpt2):
    folder, _ = hf_gpt2()
    os.remove(os.path.join(folder, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        GPT.from_pretrained(folder)


def test_config_of_another_architecture(hf_gpt2):
    folder, _ = hf_gpt2()
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["model_type"] = "llama"
    with open(path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="model_type 'llama'"):
        GPT.from_pretrained(folder)


def test_config_not_json(hf_gpt2):
    folder, _ = hf_gpt2()
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write('{"model_type": "gpt2", ')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        GPT.from_pretrained(folder)


def test_truncated_safetensors(hf_gpt2):
    folder, _ = hf_gpt2()
    path = os.path.join(folder, "model.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        GPT.from_pretrained(folder)


@pytest.mark.parametrize("foreign", [
    {"encoder.layer.0.attention.self.query.weight": (32, 32), "pooler.dense.bias": (32,)},
    # a decoder in another naming, with an untied head of its own
    {"model.embed_tokens.weight": (101, 32), "model.norm.weight": (32,),
     "lm_head.weight": (101, 32)},
], ids=["encoder", "llama-like"])
def test_foreign_safetensors_names_a_key(hf_gpt2, foreign):
    from safetensors.torch import save_file

    folder, _ = hf_gpt2()
    save_file({k: torch.randn(s) for k, s in foreign.items()},
              os.path.join(folder, "model.safetensors"))
    with pytest.raises(ValueError, match=r"(missing|unexpected) key '[\w.]+'"):
        GPT.from_pretrained(folder)


@pytest.mark.parametrize("key,shape", [
    ("transformer.h.1.mlp.c_fc.weight", (32, 64)),  # wrong width
    ("transformer.h.0.attn.c_attn.weight", (96, 32)),  # Conv1D stored (out, in) by mistake
    ("transformer.wte.weight", (100, 32)),  # vocabulary of config.json and weights disagree
])
def test_wrong_shape_names_the_key(hf_gpt2, key, shape):
    from safetensors.torch import load_file, save_file

    folder, _ = hf_gpt2()
    path = os.path.join(folder, "model.safetensors")
    sd = load_file(path)
    sd[key] = torch.randn(shape)
    save_file(sd, path)
    with pytest.raises(ValueError, match="shape of '" + key.removeprefix("transformer.")):
        GPT.from_pretrained(folder)


# ----------------------------------------------------------------------------- cache, context


def test_kv_cache_overflow_raises(tiny_gpt):
    cache = KVCache(n_layer=1, max_len=8)
    k = torch.zeros(2, 2, 6, 4)
    cache.update(0, k, k)
    cache.length = 6
    with pytest.raises(ValueError, match="KV cache holds 8 tokens; 9 needed"):
        cache.update(0, k[:, :, :3], k[:, :, :3])
    model = tiny_gpt()
    cache = KVCache(model.config.n_layer, 10)
    ids = random_ids(101, 1, 12)
    our_logits(model, ids[:, :7], cache=cache)
    assert cache.length == 7
    with pytest.raises(ValueError, match="KV cache holds 10"):
        our_logits(model, ids[:, 7:11], cache=cache)


def test_longer_than_block_size_raises(tiny_gpt):
    model = tiny_gpt(block_size=16)
    our_logits(model, torch.zeros(1, 16, dtype=torch.long))  # exactly the window is fine
    with pytest.raises(ValueError, match="17 tokens exceeds the context window of 16"):
        our_logits(model, torch.zeros(1, 17, dtype=torch.long))
    cache = KVCache(model.config.n_layer, 32)
    our_logits(model, torch.zeros(1, 14, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exceeds the context window"):
        our_logits(model, torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exceeds the context window"):
        model.generate([[1, 2, 3, 4, 5, 6]], 12, temperature=0)


@pytest.mark.parametrize("chunks", [(5, 1, 1, 3, 1), (1,) * 11, (8, 3)])
def test_cached_logits_equal_full_forward(tiny_gpt, chunks):
    model = tiny_gpt(n_layer=3, n_head=4, n_embd=48)
    ids = random_ids(101, 2, sum(chunks), seed=4)
    full = our_logits(model, ids)
    cache, start, parts = KVCache(3, 16), 0, []
    for n in chunks:
        logits, cache = our_logits(model, ids[:, start:start + n], cache=cache)
        parts.append(logits)
        start += n
    assert cache.length == start
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


def test_left_padding_with_positions_equals_unpadded(tiny_gpt):
    model = tiny_gpt()
    ids = random_ids(101, 1, 9, seed=5)
    alone = our_logits(model, ids)
    pad = 4
    padded = torch.cat([torch.full((1, pad), 7), ids], 1)
    attn = torch.cat([torch.zeros(1, pad), torch.ones(1, 9)], 1).long()
    pos = torch.cat([torch.zeros(1, pad), torch.arange(9)[None]], 1).long()
    out = our_logits(model, padded, attention_mask=attn, position_ids=pos)
    assert torch.isfinite(out).all()  # padding queries too: no NaN
    torch.testing.assert_close(out[:, pad:], alone, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- generation


PROMPTS = [[5, 6, 7], [1], [9, 8, 7, 6, 5, 4], [33, 2]]


@pytest.mark.parametrize("kw", [dict(), dict(n_layer=3, n_head=4, n_embd=48, vocab_size=257)])
def test_cached_greedy_equals_uncached(tiny_gpt, kw):
    model = tiny_gpt(**kw)
    seen = set()
    for prompt in PROMPTS:
        tokens, mask = model.generate([prompt], 20, temperature=0)
        expected = greedy_by_full_forward(model, prompt, 20)
        seen.update(expected)
        assert tokens.shape == mask.shape == (1, 20)
        assert tokens[0].tolist() == expected
        assert mask.all()
    assert len(seen) > 5


@pytest.mark.parametrize("kw", [dict(), dict(n_layer=3, n_head=4, n_embd=48, vocab_size=257)])
def test_left_padded_batch_equals_each_prompt_alone(tiny_gpt, kw):
    model = tiny_gpt(**kw)
    tokens, mask = model.generate(PROMPTS, 20, temperature=0)
    assert tokens.shape == (len(PROMPTS), 20) and mask.all()
    for row, prompt in zip(tokens.tolist(), PROMPTS):
        alone, _ = model.generate([prompt], 20, temperature=0)
        assert row == alone[0].tolist()


def test_top_k_1_and_tiny_top_p_equal_greedy(tiny_gpt):
    model = tiny_gpt()
    greedy, _ = model.generate(PROMPTS, 16, temperature=0)
    g = torch.Generator().manual_seed(0)
    top1, _ = model.generate(PROMPTS, 16, temperature=1.0, top_k=1, generator=g)
    assert torch.equal(top1, greedy)
    nucleus, _ = model.generate(PROMPTS, 16, temperature=1.0, top_p=1e-6, generator=g)
    assert torch.equal(nucleus, greedy)


def test_seeded_sampling_is_reproducible(tiny_gpt):
    model = tiny_gpt()

    def sample(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return model.generate(PROMPTS, 16, temperature=1.0, generator=g, **kw)[0]

    a, b = sample(0), sample(0)
    assert torch.equal(a, b)
    assert not torch.equal(a, sample(1))
    assert not torch.equal(a, model.generate(PROMPTS, 16, temperature=0)[0])
    assert torch.equal(sample(3, top_k=5, top_p=0.9), sample(3, top_k=5, top_p=0.9))


def check_eos_layout(tokens, mask, reference, eos):
    """Each row equals `reference` up to its first EOS (included, in the mask); after it: eos,
    masked out."""
    for row, m, ref in zip(tokens.tolist(), mask.tolist(), reference.tolist()):
        stop = ref.index(eos) + 1 if eos in ref[: len(row)] else len(row)
        assert row[:stop] == ref[:stop]
        assert all(m[:stop])
        assert row[stop:] == [eos] * (len(row) - stop)
        assert not any(m[stop:])


def test_greedy_eos_masks_the_rest(tiny_gpt):
    model = tiny_gpt()
    reference, _ = model.generate(PROMPTS, 20, temperature=0)  # EOS 50256 is outside the vocab
    first = reference[0].tolist()
    eos = next(t for i, t in enumerate(first) if i >= 3 and t not in first[:i])
    tokens, mask = model.generate(PROMPTS, 20, temperature=0, eos_id=eos)
    assert tokens.shape == mask.shape and tokens.shape[1] <= 20
    assert tokens.dtype == torch.long and mask.dtype == torch.bool
    stop = first.index(eos)
    assert tokens[0, stop] == eos and mask[0, stop]  # the EOS token itself is kept
    assert not mask[0, stop + 1:].any()
    check_eos_layout(tokens, mask, reference, eos)
    # the config's EOS is the default
    model.config.eos_token_id = eos
    again, again_mask = model.generate(PROMPTS, 20, temperature=0)
    assert torch.equal(again, tokens) and torch.equal(again_mask, mask)


def test_sampled_eos_masks_the_rest(tiny_gpt):
    model = tiny_gpt(vocab_size=12)
    g = torch.Generator().manual_seed(0)
    prompts = [[1, 2], [3], [4, 5, 6], [7], [8, 9], [10, 11, 1]] * 3
    tokens, mask = model.generate(prompts, 24, temperature=1.0, eos_id=0, generator=g)
    stopped = 0
    for row, m in zip(tokens.tolist(), mask.tolist()):
        if 0 in row:
            stop = row.index(0) + 1
            stopped += 1
        else:
            stop = len(row)
        assert all(m[:stop]) and not any(m[stop:])
        assert row[stop:] == [0] * (len(row) - stop)
    assert 0 < stopped < len(prompts)  # some rows stop, some do not: both paths exercised


def test_all_rows_stopped_ends_early_within_limit(tiny_gpt):
    model = tiny_gpt()
    reference, _ = model.generate([[5, 6, 7]], 30, temperature=0)
    eos = reference[0, 1].item()  # reached at the second step
    tokens, mask = model.generate([[5, 6, 7]], 30, temperature=0, eos_id=eos)
    assert tokens.shape[1] <= 30
    assert tokens[0, :2].tolist() == reference[0, :2].tolist()
    assert mask[0].tolist() == [True, True] + [False] * (tokens.shape[1] - 2)


def test_empty_prompt_raises(tiny_gpt):
    with pytest.raises(ValueError, match="at least one token"):
        tiny_gpt().generate([[1, 2], []], 4)


# ----------------------------------------------------------------------------- sampling


def draws(logits, n=4000, seed=0, **kw):
    """The tokens drawn from next_token_probs by GPT.draw (torch.multinomial) and by the fast
    path's sample_index, which must be the same set."""
    probs = next_token_probs(logits.expand(n, -1), **kw)
    plain = GPT.draw(None, probs, torch.Generator().manual_seed(seed))
    fast = sample_index(probs, torch.Generator().manual_seed(seed))
    assert set(plain.tolist()) == set(fast.tolist()), kw
    return set(fast.tolist())


LOGITS = torch.tensor([[1.0, 3.0, 2.0, 0.5, 2.9, -1.0]])


def test_sampling_plain():
    assert draws(LOGITS) == set(range(6))  # no filter: every token can come out


def test_sample_index_draws_each_token_with_its_probability():
    """The inverse-CDF draw against the probabilities: 200,000 rows of a row with a zero entry
    (never drawn), a tiny one and a large one; every frequency within 5 standard errors, and
    the same frequencies torch.multinomial gives."""
    p = torch.tensor([0.5, 0.0, 0.3, 1e-3, 0.199])
    n = 200_000
    g = torch.Generator().manual_seed(0)
    got = torch.bincount(sample_index(p.expand(n, -1), g), minlength=5).double() / n
    assert got[1] == 0
    se = (p.double() * (1 - p.double()) / n).sqrt()
    assert ((got - p.double()).abs() <= 5 * se + 1e-12).all(), (got, p)
    ref = torch.bincount(torch.multinomial(p, n, replacement=True, generator=g),
                         minlength=5).double() / n
    assert ((got - ref).abs() <= 7 * se + 1e-12).all(), (got, ref)
    # a row of one certain token, and rows that are not normalised (cut by top-k / top-p)
    assert sample_index(torch.tensor([[0.0, 0.0, 1.0]]), g).tolist() == [2]
    q = torch.tensor([[0.0, 2.0, 0.0, 2.0]]).expand(10_000, -1)
    assert set(sample_index(q, g).tolist()) == {1, 3}
    with pytest.raises(FloatingPointError, match="NaN"):  # torch.multinomial raised too
        sample_index(torch.tensor([[0.5, float("nan")]]), g)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_next_token_probs_filters(temperature):
    assert draws(LOGITS, temperature=temperature, top_p=1e-6) == {1}
    assert draws(LOGITS, temperature=temperature, top_k=1) == {1}
    assert draws(LOGITS, temperature=temperature, top_k=2) == {1, 4}
    assert draws(LOGITS, temperature=temperature, top_k=3) == {1, 4, 2}
    # token 5 has p = 1.7e-4 at T = 0.5: 100,000 draws miss it with probability 4e-8
    assert draws(LOGITS, temperature=temperature, top_k=100, n=100_000) == set(range(6))
    assert draws(LOGITS, temperature=temperature, top_k=3, top_p=1e-6) == {1}


@pytest.mark.parametrize("top_p,kept", [(0.45, {0}), (0.7, {0, 1}), (0.85, {0, 1, 2}),
                                        (0.99, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_smallest_set_reaching_p(top_p, kept):
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()[:, [2, 0, 3, 1]]  # shuffled: ids 1, 3, 0, 2 hold 0.5, 0.3, 0.15, 0.05
    ids = [1, 3, 0, 2]
    assert draws(logits, top_p=top_p) == {ids[i] for i in kept}


def test_top_p_mass_exactly_p_stops_there():
    # four equal tokens, 0.25 each (exact in binary): two of them already reach p = 0.5
    assert len(draws(torch.zeros(1, 4), top_p=0.5)) == 2
    assert len(draws(torch.zeros(1, 4), top_p=0.25)) == 1


# ----------------------------------------------------------------------------- log-probs


def scored_batch(model, seed=0):
    ids = random_ids(model.config.vocab_size, 3, 12, seed=seed)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, 4:12] = True
    mask[1, 1:6] = True  # a short completion, then the rest unscored
    mask[2, 7:10] = True
    return ids, mask, our_logits(model, ids)


def test_token_logprobs_equal_hand_computation(tiny_gpt):
    model = tiny_gpt()
    ids, mask, logits = scored_batch(model)
    hand = torch.zeros(3, 11)
    for b in range(3):
        for t in range(1, 12):
            if mask[b, t]:
                hand[b, t - 1] = torch.log_softmax(logits[b, t - 1], -1)[ids[b, t]]
    per_token = token_logprobs(logits, ids, mask, reduction="none")
    assert per_token.shape == (3, 11)
    torch.testing.assert_close(per_token, hand, atol=1e-5, rtol=0)
    assert (per_token[~mask[:, 1:]] == 0).all()
    assert (per_token[mask[:, 1:]] < 0).all()
    torch.testing.assert_close(token_logprobs(logits, ids, mask), hand.sum(1), atol=1e-5, rtol=0)
    count = mask[:, 1:].sum(1)
    assert count.tolist() == [8, 5, 3]
    torch.testing.assert_close(token_logprobs(logits, ids, mask, reduction="mean"),
                               hand.sum(1) / count, atol=1e-5, rtol=0)


def test_token_logprobs_ignore_mask_at_first_position(tiny_gpt):
    ids, mask, logits = scored_batch(tiny_gpt())
    mask2 = mask.clone()
    mask2[:, 0] = True  # nothing predicts token 0
    assert torch.equal(token_logprobs(logits, ids, mask2), token_logprobs(logits, ids, mask))


def test_token_logprobs_unchanged_by_right_padding(tiny_gpt):
    model = tiny_gpt()
    ids, mask, logits = scored_batch(model)
    for extra, pad_id in ((1, 0), (9, 55)):
        ids_p = torch.cat([ids, torch.full((3, extra), pad_id)], 1)
        mask_p = torch.cat([mask, torch.zeros(3, extra, dtype=torch.bool)], 1)
        logits_p = our_logits(model, ids_p)
        for reduction in ("sum", "mean"):
            torch.testing.assert_close(token_logprobs(logits_p, ids_p, mask_p, reduction),
                                       token_logprobs(logits, ids, mask, reduction),
                                       atol=1e-5, rtol=0)
        none_p = token_logprobs(logits_p, ids_p, mask_p, "none")
        torch.testing.assert_close(none_p[:, :11], token_logprobs(logits, ids, mask, "none"),
                                   atol=1e-5, rtol=0)
        assert (none_p[:, 11:] == 0).all()


@pytest.mark.parametrize("T", [0.5, 0.7, 2.0])
def test_token_logprobs_temperature(tiny_gpt, T):
    ids, mask, logits = scored_batch(tiny_gpt())
    for reduction in ("none", "sum", "mean"):
        torch.testing.assert_close(token_logprobs(logits, ids, mask, reduction, temperature=T),
                                   token_logprobs(logits / T, ids, mask, reduction),
                                   atol=1e-5, rtol=0)
    assert not torch.allclose(token_logprobs(logits, ids, mask, temperature=T),
                              token_logprobs(logits, ids, mask))


def test_token_logprobs_low_precision_logits_in_fp32(tiny_gpt):
    ids, mask, logits = scored_batch(tiny_gpt())
    half = logits.bfloat16()
    out = token_logprobs(half, ids, mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, token_logprobs(half.float(), ids, mask))


def test_token_logprobs_bad_reduction(tiny_gpt):
    ids, mask, logits = scored_batch(tiny_gpt())
    with pytest.raises(ValueError, match="reduction must be"):
        token_logprobs(logits, ids, mask, reduction="avg")


@pytest.mark.parametrize("shape", [(8, 24), (3, 5, 24), (1, 24), (40, 24), (2, 20, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_few_rows_path_equals_f_linear(shape, bias):
    """Linear's W @ x.T path (at most 32 rows on the CPU) and F.linear: same values and grads."""
    torch.manual_seed(0)
    layer = Linear(24, 40, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    y = layer(x)
    assert y.shape == (*shape[:-1], 40) and y.is_contiguous()
    x_ref = x.detach().clone().requires_grad_()
    w_ref = layer.weight.detach().clone().requires_grad_()
    b_ref = layer.bias.detach().clone().requires_grad_() if bias else None
    y_ref = torch.nn.functional.linear(x_ref, w_ref, b_ref)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad)
    if bias:
        torch.testing.assert_close(layer.bias.grad, b_ref.grad)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("B,T", [(2, 8), (3, 20)])  # 16 rows (W @ x.T path) and 60 (F.linear)
def test_gradients_equal_transformers(hf_gpt2, B, T, fast):
    """Loss and every parameter's gradient after one backward of the mean next-token NLL equal
    transformers' (Conv1D grads transposed), for the plain model and its fast twin. The tied
    embedding's grad, whose token-lookup part the fast one makes sparse on the CPU, ends dense and
    includes both uses; a fused AdamW step then runs."""
    folder, hf = hf_gpt2()
    ours = speed_up(GPT.from_pretrained(folder)) if fast else GPT.from_pretrained(folder)
    ids = random_ids(101, B, T)
    mask = torch.ones_like(ids)
    loss = -token_logprobs(ours(ids), ids, mask, reduction="sum").sum() / (B * (T - 1))
    loss.backward()
    hf_loss = hf(ids, labels=ids).loss
    hf_loss.backward()
    torch.testing.assert_close(loss, hf_loss, rtol=1e-5, atol=1e-5)
    hf_grads = {k.removeprefix("transformer."): p.grad for k, p in hf.named_parameters()}
    for name, p in ours.named_parameters():
        g = hf_grads[name.removeprefix("transformer.")]
        g = g.t() if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else g
        assert not p.grad.is_sparse, name
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6, msg=name)
    wte = ours.transformer.wte.weight
    before = wte.detach().clone()
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-3, fused=True)
    opt.step()
    assert not torch.equal(wte, before)


def test_hidden_alone_gives_dense_embedding_grad(tiny_gpt):
    """A reward or value head reads hidden() without the tied output layer: the embedding's grad
    must still be dense (the optimizers refuse sparse ones)."""
    model = speed_up(tiny_gpt())
    ids = random_ids(101, 2, 6)
    model.hidden(ids).sum().backward()
    grad = model.transformer.wte.weight.grad
    assert not grad.is_sparse and grad[ids.flatten()].abs().sum() > 0
    unused = torch.ones(101, dtype=torch.bool)
    unused[ids.flatten()] = False
    assert grad[unused].abs().sum() == 0


def test_dropout_config_and_train_mode_differs(tiny_gpt, tmp_path):
    """from_pretrained's dropout reaches the modules; eval mode turns it off again."""
    model = tiny_gpt()
    model.save_pretrained(str(tmp_path / "c"))
    dropped = GPT.from_pretrained(str(tmp_path / "c"), dropout=0.5)
    assert dropped.config.dropout == 0.5
    ids = random_ids(101, 2, 10)
    torch.manual_seed(0)
    assert not torch.allclose(dropped.train()(ids), our_logits(model, ids))
    torch.testing.assert_close(our_logits(dropped.eval(), ids), our_logits(model, ids))


def test_num_params_and_tied_head(tiny_gpt):
    model = tiny_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight
    C, V, P, L = 32, 101, 64, 2
    attn = (C * 3 * C + 3 * C) + (C * C + C)
    mlp = (C * 4 * C + 4 * C) + (4 * C * C + C)
    per_block = 2 * 2 * C + attn + mlp  # two LayerNorms, attention, MLP
    total = V * C + P * C + L * per_block + 2 * C
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - P * C


def test_untied_head_keeps_dense_embedding_grad(tiny_gpt):
    """The sparse token-lookup gradient relies on the tied head adding a dense one; a model whose
    head was untied must get a dense embedding gradient (fused AdamW refuses sparse ones)."""
    model = speed_up(tiny_gpt())
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    ids = random_ids(101, 2, 6)
    model(ids).sum().backward()
    assert not model.transformer.wte.weight.grad.is_sparse
    torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True).step()


def test_linear_few_rows_keeps_autocast_dtype():
    layer = Linear(24, 40)
    x = torch.randn(8, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.nn.functional.linear(x, layer.weight, layer.bias).dtype


def test_speed_up_is_the_same_model_in_one_call(tiny_gpt, tmp_path):
    """speed_up switches classes in place: the same parameters and state dict, the same logits
    (to rounding), the same greedy tokens, the same files; it only speeds things up."""
    plain, fast = tiny_gpt(), speed_up(tiny_gpt())
    assert isinstance(fast, FastGPT) and type(plain) is GPT
    assert all(type(m) is Linear for m in fast.modules() if isinstance(m, torch.nn.Linear))
    assert plain.state_dict().keys() == fast.state_dict().keys()
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in fast.state_dict().items())
    ids = random_ids(101, 2, 10)
    torch.testing.assert_close(fast(ids), plain(ids))
    prompts = [[1, 2, 3], [4, 5]]
    assert torch.equal(fast.generate(prompts, 6, temperature=0)[0],
                       plain.generate(prompts, 6, temperature=0)[0])
    fast.save_pretrained(str(tmp_path / "f"))
    plain.save_pretrained(str(tmp_path / "p"))
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "f" / name).read_bytes() == (tmp_path / "p" / name).read_bytes()
    assert type(GPT.from_pretrained(str(tmp_path / "f"))) is GPT  # loading stays plain
