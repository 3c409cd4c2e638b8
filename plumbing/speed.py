"""The speed tricks, kept beside the lesson rather than in it. Each buys CPU time and computes the
same thing up to float rounding; the README's benchmark section has the measurements.

- Linear: nn.Linear that multiplies a few rows as W @ x.T on the CPU (sampling sends one token per
  sequence), where MKL streams the weights faster than for F.linear's x @ W.T.
- sparse_lookup_grad: on the CPU, the token embedding's gradient as the rows it touched instead of
  a dense (vocab, C) tensor, while the output layer is tied to the embedding.
- adamw: AdamW as one fused kernel over all parameters, on the CPU too.
"""

import torch
import torch.nn as nn

LINEAR_FAST_ROWS = 32  # at most this many rows take the W @ x.T form; from ~48 F.linear is as fast


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


def sparse_lookup_grad(model, idx: torch.Tensor) -> bool:
    """Whether GPT.forward should ask for a sparse token-lookup gradient: on the CPU, and only while
    the output layer is tied to the embedding. A dense one costs a freshly zeroed (vocab, C) tensor
    and a second one for its sum with the output layer's gradient (page faults on every step);
    the sparse one holds only the rows of idx, and autograd adds it to the output layer's dense
    gradient, so the weight's .grad ends dense, as the optimizers need. On CUDA those costs are
    small: dense."""
    return idx.device.type == "cpu" and model.lm_head.weight is model.transformer.wte.weight


def adamw(params, lr: float, device: str, **kw):
    """AdamW as one fused kernel over all parameters where PyTorch has one (CPU, CUDA), instead of
    the loop over tensors; weight_decay=0 is Adam."""
    return torch.optim.AdamW(params, lr=lr, fused=torch.device(device).type in ("cpu", "cuda"),
                             **kw)
