"""The speed tricks, kept out of the lesson: model.py is plain GPT-2, and `speed_up(model)` turns a
GPT into its fast twin in one call, with the same parameters, state dict and files. Each trick
computes the same thing up to float rounding, except the sampler, which draws from the same
distribution by another method (other tokens for one seed); docs/benchmarks.md has the
measurements.

- Linear: nn.Linear that multiplies a few rows as W @ x.T on the CPU (sampling sends one token per
  sequence), where MKL streams the weights faster than for F.linear's x @ W.T.
- a sparse token-lookup gradient on the CPU, while the output layer is tied to the embedding.
- masked attention on CUDA kept to the kernels that need no per-shape plan.
- sampling by inverting the cumulative sum instead of torch.multinomial.
- adamw: AdamW as one fused kernel over all parameters, on the CPU too.
"""

import contextlib

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from model import GPT, CausalSelfAttention

LINEAR_FAST_ROWS = 32  # at most this many rows take the W @ x.T form; from ~48 F.linear is as fast
MASKED_CUDA_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def speed_up(model: GPT) -> GPT:
    """The model, its modules switched in place to the fast classes below (same parameters, same
    state dict, same forward up to rounding, samples from the same distribution); returns it, so
    `speed_up(GPT.from_pretrained(p))`."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = Linear
        elif type(module) is CausalSelfAttention:
            module.__class__ = FastAttention
    if type(model) is GPT:
        model.__class__ = FastGPT
    return model


class FastGPT(GPT):
    """GPT with a cheaper embedding gradient on the CPU and a faster sampler."""

    def forward(self, idx, attention_mask=None, position_ids=None, cache=None):
        # On the CPU, while the output layer is tied to the embedding: the token lookup's gradient
        # as the rows of idx alone. A dense one costs a freshly zeroed (vocab, C) tensor and a
        # second one for its sum with the output layer's gradient (page faults on every step);
        # autograd adds the sparse one to the output layer's dense gradient, so the weight's .grad
        # ends dense, as the optimizers need. On CUDA those costs are small: dense.
        wte, was_sparse = self.transformer.wte, self.transformer.wte.sparse
        wte.sparse = idx.device.type == "cpu" and self.lm_head.weight is wte.weight
        try:
            return super().forward(idx, attention_mask, position_ids, cache)
        finally:
            wte.sparse = was_sparse  # hidden() alone (reward and value heads) stays as it was

    def draw(self, probs, generator=None):
        return sample_index(probs, generator)


class FastAttention(CausalSelfAttention):
    """With a mask on CUDA, keep to the attention kernels that need no per-shape plan: cuDNN's
    builds one for every new length, and sampling makes a new length at every token."""

    def forward(self, x, mask=None, cache=None):
        masked_cuda = mask is not None and x.is_cuda
        with sdpa_kernel(MASKED_CUDA_BACKENDS) if masked_cuda else contextlib.nullcontext():
            return super().forward(x, mask, cache)


class Linear(nn.Linear):
    """nn.Linear, with a second way to multiply when only a few rows come in on the CPU.

    F.linear computes x @ W.T; for so few rows MKL streams the weights more slowly than for the
    same product written W @ x.T. The result is the same up to rounding.
    """

    def forward(self, x):
        rows = x.numel() // self.in_features
        if x.device.type != "cpu" or rows > LINEAR_FAST_ROWS:
            return super().forward(x)
        y = self.weight @ x.reshape(rows, self.in_features).t()  # (out, rows)
        y = y.t() if self.bias is None else y.t() + self.bias.to(y.dtype)  # autocast: bf16 y
        return y.contiguous().view(*x.shape[:-1], self.out_features)


def sample_index(probs, generator=None):
    """One index per row of (B, V) probabilities, drawn by inverting the cumulative sum at one
    uniform number per row. torch.multinomial draws an exponential per entry (B x V numbers), 20x
    slower on the CPU for the tiny preset's 686 tokens and 6x for GPT-2's 50,257. The sum is
    taken in float64, so every token keeps its probability to ~1e-16, and on the CPU (whose sum
    runs in order) a token of probability 0 (cut by top-k or top-p) is never drawn; on a GPU the
    parallel sum may give it ~1e-16. MPS has no float64 and keeps torch.multinomial."""
    if probs.device.type == "mps":
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    cdf = probs.double().cumsum(-1)
    if cdf.device.type == "cpu" and not torch.isfinite(cdf[:, -1]).all():  # (no sync on the CPU)
        raise FloatingPointError("sampling from NaN or infinite probabilities (a diverged model?)")
    u = torch.rand(probs.size(0), 1, dtype=torch.float64, device=probs.device,
                   generator=generator) * cdf[:, -1:]  # in [0, total): below the last entry
    # the first index whose cumulative sum exceeds u: cdf[i - 1] <= u < cdf[i], so p_i > 0
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.size(-1) - 1)


def adamw(params, lr: float, device: str, **kw):
    """AdamW as one fused kernel over all parameters where PyTorch has one (CPU, CUDA), instead of
    the loop over tensors; weight_decay=0 is Adam."""
    return torch.optim.AdamW(params, lr=lr, fused=torch.device(device).type in ("cpu", "cuda"),
                             **kw)
