"""The paper's ground-truth sentiment classifier, written out: RoBERTa with a classification head.

The ground truth of the DPO paper (§6.1) is siebert/sentiment-roberta-large-english: RoBERTa-large
with a sequence-classification head; the reward of a text is its P(positive). The encoder and head
below keep Hugging Face's key names, so loading the hub weights is the identity map, checked key by
key. The tokenizer is GPT-2's byte-level BPE (tiktoken) with RoBERTa's own ids (the model's
vocab.json). reward.load_ground_truth is the entry point the scripts use.

    python reward.py score "A wonderful film." "A dreadful film."     # needs the hub or a folder
"""

import json
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from plumbing.utils import (
    copy_checked,
    hub_download,
    read_hf_config,
    read_safetensors,
    resolve_checkpoint,
)

SIEBERT = "siebert/sentiment-roberta-large-english"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
# buffers that some checkpoints carry (recomputed here), and a pooler the classifier never uses
IGNORED_KEYS = ("roberta.embeddings.position_ids", "roberta.embeddings.token_type_ids")
IGNORED_PREFIX = "roberta.pooler."

# ----------------------------------------------------------------------------- the network


@dataclass
class RobertaConfig:
    """Defaults: siebert/sentiment-roberta-large-english (RoBERTa-large)."""

    vocab_size: int = 50265
    max_positions: int = 514  # position table; real tokens sit at pad_id + 1 .. (see max_len)
    n_layer: int = 24
    n_head: int = 16
    n_embd: int = 1024
    n_inner: int = 4096  # FFN width
    type_vocab_size: int = 1  # token types; every token has type 0
    layer_norm_eps: float = 1e-5
    pad_id: int = 1  # <pad>, also the padding index of the position table
    n_labels: int = 2

    @property
    def max_len(self) -> int:
        """Longest input, <s> and </s> included: positions pad_id + 1 .. max_positions - 1."""
        return self.max_positions - self.pad_id - 1


class RobertaLayer(nn.Module):
    """A post-LN encoder block: x = LN(x + attn(x)); x = LN(x + FFN(x)). The submodules nest as in
    HF (attention.self.query, attention.output.dense, intermediate.dense, output.LayerNorm, ...)
    so that the state-dict keys are HF's own. No dropout: this model only scores."""

    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        C, eps = cfg.n_embd, cfg.layer_norm_eps
        self.attention = nn.ModuleDict(dict(
            self=nn.ModuleDict(dict(query=nn.Linear(C, C), key=nn.Linear(C, C),
                                    value=nn.Linear(C, C))),
            output=nn.ModuleDict(dict(dense=nn.Linear(C, C), LayerNorm=nn.LayerNorm(C, eps=eps))),
        ))
        self.intermediate = nn.ModuleDict(dict(dense=nn.Linear(C, cfg.n_inner)))
        self.output = nn.ModuleDict(dict(dense=nn.Linear(cfg.n_inner, C),
                                         LayerNorm=nn.LayerNorm(C, eps=eps)))
        self.n_head = cfg.n_head

    def forward(self, x, mask):
        """x (B, T, C); mask (B, 1, 1, T) bool, True at the keys to attend to (real tokens)."""
        B, T, C = x.shape
        sa = self.attention["self"]
        q, k, v = (lin(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for lin in (sa.query, sa.key, sa.value))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # bidirectional
        y = y.transpose(1, 2).reshape(B, T, C)
        ao = self.attention.output
        x = ao.LayerNorm(x + ao.dense(y))
        h = F.gelu(self.intermediate.dense(x))  # exact (erf) GELU: hidden_act "gelu"
        return self.output.LayerNorm(x + self.output.dense(h))


class RobertaClassifier(nn.Module):
    """RoBERTa encoder + classification head (RobertaForSequenceClassification's layout)."""

    def __init__(self, cfg: RobertaConfig):
        super().__init__()
        self.config = cfg
        C = cfg.n_embd
        self.roberta = nn.ModuleDict(dict(
            embeddings=nn.ModuleDict(dict(
                word_embeddings=nn.Embedding(cfg.vocab_size, C),
                position_embeddings=nn.Embedding(cfg.max_positions, C),
                token_type_embeddings=nn.Embedding(cfg.type_vocab_size, C),
                LayerNorm=nn.LayerNorm(C, eps=cfg.layer_norm_eps),
            )),
            encoder=nn.ModuleDict(dict(
                layer=nn.ModuleList([RobertaLayer(cfg) for _ in range(cfg.n_layer)]))),
        ))
        self.classifier = nn.ModuleDict(dict(dense=nn.Linear(C, C),
                                             out_proj=nn.Linear(C, cfg.n_labels)))

    def forward(self, idx, attention_mask=None):
        """Class logits (B, n_labels) of token ids idx (B, T), <s> first, right-padded with pad_id.

        attention_mask (B, T): 1 at real tokens; default idx != pad_id. Positions count real tokens
        from pad_id + 1 and padding sits at pad_id (fairseq's make_positions, as in HF)."""
        cfg, emb = self.config, self.roberta.embeddings
        if idx.size(1) > cfg.max_len:
            raise ValueError(f"sequence of {idx.size(1)} tokens exceeds RoBERTa's {cfg.max_len}")
        real = idx.ne(cfg.pad_id)
        pos = real.cumsum(1) * real + cfg.pad_id  # (B, T)
        x = (emb.word_embeddings(idx) + emb.token_type_embeddings(torch.zeros_like(idx))
             + emb.position_embeddings(pos))
        x = emb.LayerNorm(x)  # (B, T, C)
        keep = real if attention_mask is None else attention_mask.bool()
        mask = keep[:, None, None, :]  # (B, 1, 1, T): padding keys are never attended to
        for layer in self.roberta.encoder.layer:
            x = layer(x, mask)
        h = torch.tanh(self.classifier.dense(x[:, 0]))  # (B, C), the <s> token
        return self.classifier.out_proj(h)

    def load_hf_state_dict(self, sd: dict):
        """Load a RobertaForSequenceClassification state dict (HF names): assert keys and shapes."""
        sd = {k: v for k, v in sd.items()
              if k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIX)}
        copy_checked(self.state_dict(), sd, "a RoBERTa classifier state dict")


# ----------------------------------------------------------------------------- the tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table, in which vocab.json spells each token's bytes: printable
    bytes stand for themselves, the others (space, newline, ...) for chr(256 + n): " " -> "Ġ"."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class RobertaTokenizer:
    """GPT-2's byte-level BPE (tiktoken: same regex, same merges) with RoBERTa's ids.

    Gives transformers' RobertaTokenizer ids (no prefix space; spaces and newlines are bytes like
    any other) with one deliberate difference: strings like "<s>" or "<mask>" inside a text are
    plain text here (as data.Tokenizer does), where transformers turns them into special tokens.
    """

    def __init__(self, vocab: dict[str, int], max_len: int = 512):
        from data import gpt2_encoding

        for t in ("<s>", "</s>", "<pad>", "<unk>"):
            if t not in vocab:
                raise ValueError(f"vocab.json has no {t} token: not a RoBERTa vocabulary")
        self.bos_id, self.eos_id = vocab["<s>"], vocab["</s>"]
        self.pad_id, self.unk_id = vocab["<pad>"], vocab["<unk>"]
        self.enc, self.max_len = gpt2_encoding(), max_len
        self.vocab, self.b2u = vocab, bytes_to_unicode()
        self.id_map = {}  # GPT-2 id -> RoBERTa id, filled as ids are first seen (not per load)

    def roberta_id(self, i: int) -> int:
        """The RoBERTa id of GPT-2 token i: its spelling in vocab.json (byte-to-unicode)."""
        if i not in self.id_map:
            spelling = "".join(self.b2u[b] for b in self.enc.decode_single_token_bytes(i))
            self.id_map[i] = self.vocab.get(spelling, self.unk_id)
        return self.id_map[i]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """<s> text </s> per text, the text cut to max_len - 2 tokens (as truncation=True does)."""
        return [[self.bos_id, *map(self.roberta_id, ids[: self.max_len - 2]), self.eos_id]
                for ids in self.enc.encode_ordinary_batch(texts)]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]


# ----------------------------------------------------------------------------- the scorer


class RobertaScorer:
    """texts -> P(positive): softmax over the classifier's labels, at the positive label's index."""

    def __init__(self, model: RobertaClassifier, tok: RobertaTokenizer, positive: int,
                 device: str = "cpu"):
        self.model = model.to(device).eval().requires_grad_(False)
        self.tok, self.positive, self.device = tok, positive, device

    def to(self, device: str) -> "RobertaScorer":
        """Move the classifier (evaluate.py keeps it on the host between evaluations)."""
        self.model.to(device)
        self.device = device
        return self

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 32,
                 progress: bool | None = None) -> torch.Tensor:
        """(N,) float32 P(positive), in input order. Texts are batched longest first (less padding;
        an out-of-memory error shows at the first batch). progress None: a bar if > 4 batches."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        ids = self.tok.encode_batch(list(texts))
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = torch.empty(len(ids), dtype=torch.float32)
        starts = range(0, len(ids), batch_size)
        show = progress if progress is not None else len(starts) > 4
        for s in tqdm(starts, desc="ground-truth reward", disable=not show, mininterval=1.0):
            rows = order[s : s + batch_size]
            x = torch.full((len(rows), len(ids[rows[0]])), self.tok.pad_id, dtype=torch.long)
            for r, i in enumerate(rows):
                x[r, : len(ids[i])] = torch.tensor(ids[i])
            logits = self.model(x.to(self.device))  # (b, n_labels)
            out[rows] = logits.float().softmax(-1)[:, self.positive].cpu()
        return out


# ----------------------------------------------------------------------------- loading


def resolve_roberta(name_or_path: str) -> tuple[str, str]:
    """(folder, weights file) of a local folder or a hub repo holding config.json, vocab.json and
    model.safetensors, else pytorch_model.bin (siebert publishes only the latter)."""
    if os.path.isdir(name_or_path):
        folder = resolve_checkpoint(name_or_path, ("config.json", "vocab.json"))
    elif os.path.exists(name_or_path) or name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{name_or_path} is not a folder (nor a hub id like {SIEBERT})")
    else:
        folder = hub_download(name_or_path, ("config.json", "vocab.json"))
        for f in WEIGHT_FILES:
            try:
                hub_download(name_or_path, (f,))  # lands in the same snapshot folder
                break
            except OSError:
                continue
    for f in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, f)):
            return folder, os.path.join(folder, f)
    where = "" if os.path.isdir(name_or_path) else " on the hub (unreachable? pass a folder)"
    raise FileNotFoundError(f"{name_or_path} has neither {' nor '.join(WEIGHT_FILES)}{where}")


def read_torch_bin(path: str) -> dict:
    """A state dict from a pytorch_model.bin, tensors only (weights_only: no code runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle of something else, ...
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{path} is not a readable PyTorch weights file ({type(e).__name__}: "
                         f"{msg})") from None


def roberta_config_from_hf(hf: dict) -> RobertaConfig:
    if hf.get("model_type") != "roberta":
        raise ValueError(f"config.json describes model_type {hf.get('model_type')!r}, "
                         f"not 'roberta'")
    if hf.get("hidden_act", "gelu") != "gelu" or hf.get("position_embedding_type",
                                                         "absolute") != "absolute":
        raise ValueError("only RoBERTa's own encoder (exact GELU, absolute positions) is supported")
    try:
        return RobertaConfig(
            vocab_size=hf["vocab_size"], max_positions=hf["max_position_embeddings"],
            n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
            n_embd=hf["hidden_size"], n_inner=hf["intermediate_size"],
            type_vocab_size=hf.get("type_vocab_size", 1), layer_norm_eps=hf["layer_norm_eps"],
            pad_id=hf.get("pad_token_id", 1), n_labels=len(id2label(hf)),
        )
    except KeyError as e:
        raise ValueError(f"config.json has no {e} entry: not a RoBERTa config") from None


def id2label(hf: dict) -> dict[int, str]:
    """config.json's labels; a config without them has HF's defaults for 2 labels."""
    labels = hf.get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"}
    return {int(i): str(name) for i, name in labels.items()}


def positive_label(labels: dict[int, str]) -> int:
    """Index of the positive class, read from the labels, never assumed. A label "positive" (any
    case), else "pos"; else, for HF's unnamed pair LABEL_0/LABEL_1 (siebert's config had no names
    before April 2021), LABEL_1, the usual binary convention. Anything else is an error."""
    for name in ("positive", "pos"):
        hits = [i for i, lab in labels.items() if lab.lower() == name]
        if len(hits) == 1:
            return hits[0]
    if {i: lab.lower() for i, lab in labels.items()} == {0: "label_0", 1: "label_1"}:
        return 1
    raise ValueError(f"config.json's id2label {labels} has no single 'positive' label: not a "
                     f"sentiment classifier this scorer can read")


def load_roberta_scorer(name_or_path: str = SIEBERT, device: str = "cpu") -> RobertaScorer:
    """The ground-truth scorer from a hub id (default: the paper's classifier) or a local folder
    with config.json, vocab.json and model.safetensors or pytorch_model.bin."""
    folder, weights = resolve_roberta(name_or_path)
    hf = read_hf_config(folder)
    cfg = roberta_config_from_hf(hf)
    positive = positive_label(id2label(hf))
    with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    if vocab.get("<pad>") != cfg.pad_id or max(vocab.values()) >= cfg.vocab_size:
        raise ValueError(f"{folder}/vocab.json does not fit config.json (<pad> must be "
                         f"{cfg.pad_id}, ids below {cfg.vocab_size})")
    sd = read_safetensors(weights) if weights.endswith(".safetensors") else read_torch_bin(weights)
    model = RobertaClassifier(cfg)
    model.load_hf_state_dict(sd)
    return RobertaScorer(model, RobertaTokenizer(vocab, cfg.max_len), positive, device)
