"""frontier.py --rehearse: every stage of a preset at its real shapes, cut to a couple of steps, on
random weights and synthetic data written in the hub layouts: what to run first on a new machine
(a GPU's memory, a driver, a disk) before hours of the real sweep, and what the slow tests run on
the CPU for the gpt2 preset.

Kept as the preset has them: the model sizes, sequence lengths, micro-batches, generation
batches, best-of-N values, the number of training prompts loaded, and the code path of every
stage. Cut: the steps (2 per run, a checkpoint and a held-out evaluation at each; PPO one pass
over its rollouts), the sweeps (one value each, seed 0), the pairs (one sampling chunk), the
held-out sets (one micro-batch) and the test prefixes (one: each checkpoint's evaluation samples
one completion, best-of-N samples N of it, the optimum M). So the evaluation's sampling and KL
forwards run below their real micro-batch (best-of-N's largest N aside): a GPU's memory for them
is planned (frontier.py --plan), not rehearsed. Its numbers mean nothing: the weights are random.

Nothing is downloaded. Under <out_dir>/inputs/ it writes, once, each folder atomically:
  base/          a GPT-2 of the preset's size (config.json, model.safetensors: the hub layout);
  ground_truth/  a RoBERTa-large sentiment classifier in siebert's layout (config.json with its
                 labels, vocab.json, model.safetensors);
  imdb/          25,000 + 25,000 synthetic reviews of IMDb's length in its parquet layout
                 (plain_text/train-00000-of-00001.parquet, test-...).
Each stage's wall time and peak memory (the process's resident set; on CUDA, also the GPU's peak
allocation) go to <out_dir>/rehearsal.jsonl, printed as a table at the end.
"""

import dataclasses
import json
import os
import random
import threading
import time

import torch

from plumbing.plan import GPT2_SIZES  # hub name: (layers, heads, width)
from plumbing.utils import append_jsonl, read_jsonl, write_folder

N_REVIEWS = 25_000  # per split, as IMDb's train and test


def inputs(out_dir: str) -> dict:
    """The FrontierConfig overrides that point a preset at the rehearsal's inputs."""
    where = os.path.join(out_dir, "inputs")
    return dict(base_model=os.path.join(where, "base"), dataset=os.path.join(where, "imdb"),
                ground_truth=os.path.join(where, "ground_truth"))


def write_inputs(out_dir: str, base: str):
    """Write the rehearsal's inputs (module docstring) where missing; `base` names the preset's
    GPT-2 size."""
    paths = inputs(out_dir)
    write_gpt2(paths["base_model"], base)
    if not os.path.isdir(paths["ground_truth"]):
        print(f"rehearsal: a random RoBERTa-large classifier -> {paths['ground_truth']}",
              flush=True)
        write_folder(paths["ground_truth"], write_roberta)
    if not os.path.isdir(paths["dataset"]):
        print(f"rehearsal: {N_REVIEWS:,} + {N_REVIEWS:,} synthetic reviews -> "
              f"{paths['dataset']}", flush=True)
        write_folder(paths["dataset"], write_imdb)


def write_gpt2(folder: str, base: str):
    """A GPT-2 of the hub size `base` with random weights (seed 0) in the hub layout, written
    atomically unless `folder` exists (hh_tldr/rehearse.py writes its base model with it too)."""
    from model import GPT, GPTConfig

    if base not in GPT2_SIZES:
        raise ValueError(f"--rehearse knows the GPT-2 sizes {', '.join(GPT2_SIZES)}, not {base!r}")
    if os.path.isdir(folder):
        return
    n_layer, n_head, n_embd = GPT2_SIZES[base]
    print(f"rehearsal: a random {base} ({n_layer} layers, width {n_embd}) -> {folder}", flush=True)
    torch.manual_seed(0)
    write_folder(folder, GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd))
                 .save_pretrained)


def write_roberta(folder: str, cfg=None):
    """siebert's layout: config.json (RobertaForSequenceClassification, NEGATIVE/POSITIVE),
    vocab.json (RoBERTa's specials, GPT-2's tokens spelled as in GPT-2's vocab.json, <mask>
    last) and random weights under Hugging Face's key names."""
    from safetensors.torch import save_file

    from data import gpt2_encoding
    from roberta import RobertaClassifier, RobertaConfig, bytes_to_unicode

    cfg = cfg or RobertaConfig()  # (another size: the tests')
    enc, b2u = gpt2_encoding(), bytes_to_unicode()
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i in range(enc.n_vocab):
        vocab["".join(b2u[b] for b in enc.decode_single_token_bytes(i))] = len(vocab)
    while len(vocab) < cfg.vocab_size - 1:
        vocab[f"madeupword{len(vocab) - 4 - enc.n_vocab:04d}"] = len(vocab)
    vocab["<mask>"] = cfg.vocab_size - 1
    hf = {"architectures": ["RobertaForSequenceClassification"], "model_type": "roberta",
          "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_positions,
          "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
          "hidden_size": cfg.n_embd, "intermediate_size": cfg.n_inner, "hidden_act": "gelu",
          "position_embedding_type": "absolute", "type_vocab_size": cfg.type_vocab_size,
          "layer_norm_eps": cfg.layer_norm_eps, "pad_token_id": cfg.pad_id,
          "bos_token_id": 0, "eos_token_id": 2,
          "id2label": {"0": "NEGATIVE", "1": "POSITIVE"},
          "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}
    torch.manual_seed(0)
    model = RobertaClassifier(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)


def write_imdb(folder: str, n: int = N_REVIEWS):
    """IMDb's parquet layout (columns text, label) with synthetic reviews of about IMDb's length
    (several synthetic reviews of one label, in paragraphs split by <br /><br /> as IMDb's are),
    so that the SFT model's sequences and the prompts are as long as the real ones."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthetic.reviews import synthetic_reviews

    os.makedirs(os.path.join(folder, "plain_text"))
    for split, seed in (("train", 1), ("test", 2)):
        pool = synthetic_reviews(8 * n, seed)
        by_label = {0: [t for t, y in pool if y == 0], 1: [t for t, y in pool if y == 1]}
        rng, texts, labels = random.Random(seed), [], []
        for i in range(n):
            y = i % 2
            texts.append("<br /><br />".join(rng.sample(by_label[y], 6)))
            labels.append(y)
        table = pa.table({"text": texts, "label": pa.array(labels, pa.int64())})
        pq.write_table(table, os.path.join(folder, "plain_text",
                                           f"{split}-00000-of-00001.parquet"))


def cut(c):
    """One step's config at rehearsal size: the counts cut, the shapes kept (module docstring)."""
    fields = {f.name for f in dataclasses.fields(c)}
    kw = dict(steps=2, warmup=1, eval_every=1, save_every=1, patience=0, epochs=1,
              eval_size=getattr(c, "micro_batch", 0), refresh_every=1)
    if "chunk" in fields:  # pairs.py: one sampling chunk
        kw.update(n_prefixes=c.chunk)
    if "samples" in fields and "refresh_every" in fields:  # online DPO: one generate() per pool
        kw.update(pool_prompts=max(1, c.gen_batch // c.samples))
    if "mini_batch" in fields:  # PPO: one generate() of gen_batch, one pass over its minibatches
        kw.update(batch_size=max(c.gen_batch, c.mini_batch), ppo_epochs=1)
    if "M" in fields:  # the optimum: one prefix's M samples
        kw.update(n_prefixes=1)
    elif "best_of" in fields:  # the evaluation: one test prefix (best-of-N: N samples of it,
        kw.update(n_prefixes=1)  # the largest N a generate() of its real size)
    if "objective" in fields:  # the reward model: at most the pairs of one chunk, one epoch
        kw.update(eval_every=2, save_every=2, eval_size=2 * c.micro_batch)
    return dataclasses.replace(c, **{k: v for k, v in kw.items() if k in fields})


def cut_preset(p):
    """A preset's sweeps at one value each (the same stages, the same code paths)."""
    return dataclasses.replace(p, betas=p.betas[:1], alphas=p.alphas[:1],
                               target_kls=p.target_kls[:1], pft_seeds=p.pft_seeds[:1])


@dataclasses.dataclass
class Measured:
    """A step's main function, timed and its peak memory measured, one row per call in `log`.
    (A class, not a closure: frontier.py may send it to a worker process.)"""

    fn: object
    name: str
    log: str

    def __call__(self, cfg, **kw):
        meter, t0 = PeakMemory(), time.time()
        try:
            with meter:
                return self.fn(cfg, **kw)
        finally:
            append_jsonl(self.log, dict(stage=self.name, seconds=round(time.time() - t0, 1),
                                        peak_rss_gb=round(meter.rss / 2**30, 2),
                                        peak_cuda_gb=meter.cuda and round(meter.cuda / 2**30, 2)))


class PeakMemory:
    """The peak resident set of this process while inside (sampled every 20 ms from /proc; where
    there is no /proc, the process's peak so far), and on CUDA the peak GPU allocation."""

    def __enter__(self):
        self.rss, self.cuda, self._stop = rss(), None, threading.Event()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.rss = max(self.rss, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.rss = max(self.rss, rss())
        if torch.cuda.is_available():
            self.cuda = torch.cuda.max_memory_allocated()


def rss() -> int:
    """This process's resident set in bytes (its peak so far where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def print_rehearsal(log: str):
    """The table of rehearsal.jsonl: each stage's wall time and peak memory (last call each)."""
    rows = {r["stage"]: r for r in read_jsonl(log)}
    print(f"rehearsal: {len(rows)} stages ({log})")
    print(f"  {'stage':<34}{'seconds':>9}{'peak RSS GB':>13}{'peak GPU GB':>13}")
    for r in rows.values():
        gpu = "—" if r["peak_cuda_gb"] is None else f"{r['peak_cuda_gb']:.2f}"
        print(f"  {r['stage']:<34}{r['seconds']:>9.1f}{r['peak_rss_gb']:>13.2f}{gpu:>13}")
