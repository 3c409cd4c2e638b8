"""GPT-2, written out: config, attention, MLP, block, the model, sampling with an explicit KV cache,
log-probs, and loading and saving the Hugging Face files.

The weights use GPT-2's own names, so loading the hub files is the identity map except for the
Conv1D layers, which GPT-2 stores as (in, out) and nn.Linear as (out, in). This is plain PyTorch;
the scripts wrap every model they load in plumbing/speed.py's speed_up(model), which adds the CPU
and GPU fast paths: the same forward up to float rounding, and a sampler that draws from the same
distribution by another method (so other tokens for the same seed).

    python model.py --init gpt2 --prompt "This movie was"      # needs the hub (or a local folder)
    python -c "from model import *; m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64)); print(m)"
"""

import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from plumbing.utils import (
    autocast,
    copy_checked,
    read_hf_config,
    read_safetensors,
    resolve_checkpoint,
)

# The four GPT-2 sizes on the Hugging Face hub (the unprefixed names redirect there).
HUB_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
# GPT-2 keeps these as Conv1D with (in, out) weights; we use nn.Linear, (out, in).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@dataclass
class GPTConfig:
    block_size: int = 1024  # context length (n_positions)
    vocab_size: int = 50257  # GPT-2's BPE; smaller for a compact vocabulary
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # one rate for embeddings, attention and residuals; off in every RL stage
    layer_norm_epsilon: float = 1e-5
    eos_token_id: int = 50256


# ----------------------------------------------------------------------------- the network


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head, self.dropout, self.layer = cfg.n_head, cfg.dropout, layer

    def forward(self, x, mask=None, cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, nh, S, hs), S = past + T
        # mask is None: plain causal attention; else a (B or 1, 1, T, S) bool mask, True = attend
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x, mask=None, cache=None):
        x = x + self.attn(self.ln_1(x), mask, cache)  # pre-LN
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden(self, idx, attention_mask=None, position_ids=None, cache=None):
        """Final hidden states (B, T, C) after ln_f: what the LM, reward or value head reads.

        idx (B, T) token ids. attention_mask (B, past + T): 1 for real tokens, 0 for padding; only
        needed for left padding (right padding never changes the real positions under causal
        attention). position_ids (B, T): default past .. past + T - 1. cache: a KVCache, updated.
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds the context window of "
                             f"{self.config.block_size}")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=idx.device).unsqueeze(0)
        mask = None
        if attention_mask is not None or past > 0:
            # query i sits at absolute position past + i and sees keys 0 .. past + i
            mask = torch.ones(T, past + T, dtype=torch.bool, device=idx.device).tril(past)
            mask = mask.view(1, 1, T, past + T)
            if attention_mask is not None:
                mask = mask & attention_mask.bool()[:, None, None, :]
                # a padding query would see no key at all (NaN): let every query see itself
                i = torch.arange(T, device=idx.device)
                mask = mask | (i[:, None] + past == torch.arange(past + T, device=idx.device))
        x = self.transformer.wte(idx) + self.transformer.wpe(position_ids)  # (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, mask, cache)
        if cache is not None:
            cache.length += T
        return self.transformer.ln_f(x)

    def forward(self, idx, attention_mask=None, position_ids=None, cache=None):
        """Logits (B, T, vocab); with a cache, (logits, cache)."""
        logits = self.lm_head(self.hidden(idx, attention_mask, position_ids, cache))
        return logits if cache is None else (logits, cache)

    # ------------------------------------------------------------------------- weights in and out

    @classmethod
    def from_pretrained(cls, name_or_path: str, dropout: float = 0.0) -> "GPT":
        """A GPT-2 size from the hub ("gpt2" .. "gpt2-xl"), a folder with config.json and
        model.safetensors (the hub layout, or transformers' save_pretrained output), or a run
        folder (its last checkpoint)."""
        folder = gpt_folder(name_or_path)
        cfg = config_from_hf(read_hf_config(folder), dropout=dropout)
        model = cls(cfg)
        model.load_hf_state_dict(read_safetensors(os.path.join(folder, "model.safetensors")))
        return model

    def load_hf_state_dict(self, sd: dict):
        """Load a GPT-2 state dict in either naming found in the wild; assert keys and shapes."""
        own = self.state_dict()
        sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items()
              if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # causal-mask buffers
        head, wte = sd.pop("lm_head.weight", None), sd.get("wte.weight")
        if head is not None and wte is not None and not torch.equal(head, wte):  # tied
            raise ValueError("lm_head.weight differs from wte.weight: GPT-2's head is tied")
        sd = {k: v.t() if k.endswith(CONV1D) else v for k, v in sd.items()}
        targets = {k.removeprefix("transformer."): v for k, v in own.items()
                   if k != "lm_head.weight"}
        copy_checked(targets, sd, "a GPT-2 state dict", "(Conv1D weights are stored (in, out))")

    def save_pretrained(self, folder: str):
        """config.json (HF GPT-2 keys) + model.safetensors (HF names, Conv1D orientation), so that
        transformers' GPT2LMHeadModel.from_pretrained(folder) loads it. Writes into `folder` as is:
        callers wanting atomicity pass a temporary folder and rename it (utils.save_checkpoint)."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        sd = {}
        for k, v in self.state_dict().items():
            if k == "lm_head.weight":
                continue  # tied to wte
            v = v.detach().to("cpu", torch.float32)
            sd[k] = (v.t() if k.endswith(CONV1D) else v).contiguous()
        save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config_to_hf(self.config), f, indent=2)

    # ------------------------------------------------------------------------- sampling

    def draw(self, probs, generator=None):
        """One token id per row of (B, V) next-token probabilities."""
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 eos_id=None, generator=None):
        """Sample continuations of a batch of prompts of different lengths.

        prompts: list of B token-id lists. They are left-padded, with an attention mask and position
        ids so that each row computes exactly what it would alone. temperature 0 is greedy. A row
        stops at eos_id (default: the config's); later tokens are masked out.
        Returns tokens (B, N) and mask (B, N) bool, N <= max_new_tokens; the EOS token itself is
        kept in the mask (the policy chose to stop), the tokens after it are eos_id and masked.
        """
        device = self.transformer.wte.weight.device
        eos_id = self.config.eos_token_id if eos_id is None else eos_id
        B, P = len(prompts), max(len(p) for p in prompts)
        if min(len(p) for p in prompts) == 0:
            raise ValueError("every prompt needs at least one token")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        idx = torch.zeros(B, P, dtype=torch.long, device=device)  # left padding, masked out
        attn = torch.zeros(B, P + max_new_tokens, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            idx[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
            attn[i, P - len(p):] = 1
        attn[:, P:] = 1
        pos = (attn[:, :P].cumsum(1) - 1).clamp(min=0)  # (B, P) position ids of the prompt
        cache = KVCache(self.config.n_layer, P + max_new_tokens)
        h = self.hidden(idx, attn[:, :P], pos, cache)[:, -1]  # (B, C), last prompt position
        pos = pos[:, -1]
        out, masks, done = [], [], torch.zeros(B, dtype=torch.bool, device=device)
        for t in range(max_new_tokens):
            logits = self.lm_head(h)  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(-1)  # greedy
            else:
                nxt = self.draw(next_token_probs(logits, temperature, top_k, top_p), generator)
            nxt = torch.where(done, eos_id, nxt)
            masks.append(~done)
            out.append(nxt)
            done = done | (nxt == eos_id)
            # one host sync every 8 tokens instead of every token
            if t == max_new_tokens - 1 or (t % 8 == 7 and bool(done.all())):
                break
            pos = pos + 1
            h = self.hidden(nxt[:, None], attn[:, : P + t + 1], pos[:, None], cache)[:, -1]
        return torch.stack(out, 1), torch.stack(masks, 1)


# ----------------------------------------------------------------------------- sampling helpers


class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    Each layer's tensors are (B, nh, max_len, hs), allocated once and filled up to `length`. The
    cache is an explicit object: the caller creates it, passes it in, and gets it back updated.
    """

    def __init__(self, n_layer: int, max_len: int):
        self.k, self.v = [None] * n_layer, [None] * n_layer  # allocated on first use, in k's dtype
        self.max_len = max_len
        self.length = 0  # tokens already stored

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store this step's (B, nh, T, hs) keys/values; return all of them so far."""
        s, T = self.length, k.size(2)
        if s + T > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; {s + T} needed")
        if self.k[layer] is None:
            B, nh, _, hs = k.shape
            self.k[layer] = k.new_empty(B, nh, self.max_len, hs)
            self.v[layer] = v.new_empty(B, nh, self.max_len, hs)
        self.k[layer][:, :, s : s + T] = k
        self.v[layer][:, :, s : s + T] = v
        return self.k[layer][:, :, : s + T], self.v[layer][:, :, : s + T]


def completions(tokens, mask) -> list[list[int]]:
    """generate()'s (B, N) output as B token lists, each cut after its EOS (two host copies in
    all, not one per row)."""
    return [row[:n] for row, n in zip(tokens.tolist(), mask.sum(1).tolist())]


@torch.no_grad()
def sample_completions(model, prompts, batch_size, generator=None, eos_id=None, **sampling):
    """Completions of every prompt (token lists, each cut after its EOS), sampled batch_size
    prompts per generate() call under autocast: the one way pairs, PPO rollouts and the
    evaluation sample."""
    device = str(model.transformer.wte.weight.device)
    out = []
    for i in range(0, len(prompts), batch_size):
        with autocast(device):
            tokens, mask = model.generate(prompts[i: i + batch_size], generator=generator,
                                          eos_id=eos_id, **sampling)
        out += completions(tokens, mask)
    return out


def next_token_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """(B, V) next-token probabilities from (B, V) logits: temperature (> 0), then top-k, then
    top-p (the smallest set of most likely tokens that holds top_p of the mass)."""
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already hold top_p of the mass; keep the best
        drop = probs.cumsum(-1) - probs >= top_p
        drop[:, 0] = False
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits.softmax(-1)


# ----------------------------------------------------------------------------- log-probs


def token_logprobs(logits, input_ids, mask, reduction="sum", temperature=1.0):
    """Log-probs of the tokens of `input_ids` under `logits = model(input_ids)`: the one home of
    this computation for every loop.

    logits (B, T, V), any dtype; input_ids (B, T); mask (B, T), 1 at the tokens to score (the
    completion, never padding). Token t is predicted by logits[:, t - 1], so mask[:, 0] is unused.
    reduction: "none" -> (B, T - 1) per-token log-probs of input_ids[:, 1:], 0 where masked;
    "sum" -> (B,) summed over scored tokens (DPO's sequence log-prob); "mean" -> (B,) averaged.
    temperature: score at the temperature the tokens were sampled with.
    cross_entropy(logits, target) is exactly logsumexp(logits) - logits[target], i.e. minus the
    gather of log_softmax: one fused call, here over all T positions (the last one scored against
    a dummy target and dropped) so that no sliced copy of the (B, T, V) logits is made.
    """
    B, T, V = logits.shape
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids.roll(-1, dims=1).long()  # [:, t] = input_ids[:, t + 1]; last: dummy
    lp = -F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T), reduction="none")
    lp, m = lp.view(B, T)[:, :-1], mask[:, 1:].bool()
    lp = torch.where(m, lp, torch.zeros_like(lp))
    if reduction == "none":
        return lp
    if reduction == "sum":
        return lp.sum(-1)
    if reduction == "mean":
        return lp.sum(-1) / m.sum(-1).clamp(min=1)
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', not {reduction!r}")


# ----------------------------------------------------------------------------- files


GPT_FILES = ("config.json", "model.safetensors")


def gpt_folder(name_or_path: str) -> str:
    """The local folder of a GPT-2 checkpoint: a hub size (downloaded once), a checkpoint folder,
    or a run folder's last checkpoint (utils.resolve_checkpoint)."""
    return resolve_checkpoint(name_or_path, GPT_FILES, HUB_NAMES)


def config_from_hf(hf: dict, dropout: float = 0.0) -> GPTConfig:
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"config.json describes model_type {hf.get('model_type')!r}, not 'gpt2'")
    n_inner = hf.get("n_inner")
    if n_inner not in (None, 4 * hf["n_embd"]) or hf.get("activation_function", "gelu_new") not in (
            "gelu_new", "gelu_pytorch_tanh"):
        raise ValueError("only GPT-2's own MLP (4 x n_embd, tanh GELU) is supported")
    return GPTConfig(
        block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
        n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=dropout,
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        eos_token_id=hf.get("eos_token_id") if hf.get("eos_token_id") is not None else 50256,
    )


def config_to_hf(cfg: GPTConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "bos_token_id": cfg.eos_token_id, "eos_token_id": cfg.eos_token_id,
        "tie_word_embeddings": True, "initializer_range": 0.02,
    }


if __name__ == "__main__":
    import argparse

    from data import load_tokenizer  # the demo only

    ap = argparse.ArgumentParser(description="Sample from GPT-2 (hub size or local folder).")
    ap.add_argument("--init", default="gpt2")
    ap.add_argument("--prompt", default="This movie was")
    ap.add_argument("--num_samples", type=int, default=3)
    args = ap.parse_args()
    tok = load_tokenizer(gpt_folder(args.init))
    model = GPT.from_pretrained(args.init).eval()  # plain: torch.multinomial draws (see speed.py)
    tokens, mask = model.generate([tok.encode(args.prompt)] * args.num_samples, 48,
                                  generator=torch.Generator().manual_seed(0))
    for c in completions(tokens, mask):
        print(repr(args.prompt + tok.decode(c)))
