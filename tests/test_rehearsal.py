"""frontier.py --rehearse (plumbing/rehearse.py): the GPU presets' every stage at their real shapes,
cut to a couple of steps, on random weights and synthetic data written in the hub layouts. The
inputs are read by the real loaders (and transformers, for the classifier's layout); the plan keeps
the shapes and cuts the counts; the slow test runs the gpt2 rehearsal end to end on the CPU."""

import dataclasses
import json
import os

import pytest
import torch

import frontier
from data import load_reviews
from roberta import RobertaConfig, load_roberta_scorer

from plumbing import rehearse
from plumbing.presets import PRESETS
from plumbing.utils import read_jsonl


def test_the_classifier_written_is_read_by_transformers_and_by_ours(tmp_path):
    """siebert's layout at a small size: transformers' RobertaForSequenceClassification loads the
    folder as it is, and its logits equal our scorer's on the same ids; vocab.json holds every
    GPT-2 token, RoBERTa's specials and <mask> last."""
    from transformers import RobertaForSequenceClassification

    folder = str(tmp_path / "gt")
    os.makedirs(folder)
    cfg = RobertaConfig(n_layer=2, n_head=2, n_embd=32, n_inner=64)
    rehearse.write_roberta(folder, cfg)
    with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    assert len(vocab) == cfg.vocab_size == max(vocab.values()) + 1
    assert vocab["<pad>"] == 1 and vocab["<mask>"] == cfg.vocab_size - 1 and vocab["Ġthe"] > 3
    ours = load_roberta_scorer(folder)
    hf = RobertaForSequenceClassification.from_pretrained(folder).eval()
    a, b = ours.tok.encode("A long and wonderful film."), ours.tok.encode("Dreadful.")
    ids = torch.tensor([a, b + [1] * (len(a) - len(b))])  # the second padded with <pad>
    with torch.no_grad():
        hf_logits = hf(input_ids=ids, attention_mask=(ids != 1).long()).logits
        assert torch.allclose(ours.model(ids), hf_logits, atol=1e-5)
    assert hf.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"} and ours.positive == 1


def test_the_reviews_written_are_imdb_shaped(tmp_path):
    """IMDb's parquet layout, read by data.load_reviews as a local --dataset: both splits,
    balanced labels, reviews of IMDb's length (about 1,300 characters on average there) with its
    <br /> paragraph breaks, which the loader cleans."""
    folder = str(tmp_path / "imdb")
    os.makedirs(folder)
    rehearse.write_imdb(folder, n=200)
    assert sorted(os.listdir(os.path.join(folder, "plain_text"))) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    for split in ("train", "test"):
        texts, labels = load_reviews(folder, split)
        assert len(texts) == 200 and sum(labels) == 100
        assert 600 < sum(map(len, texts)) / len(texts) < 2000
        assert not any("<br" in t for t in texts)
    assert load_reviews(folder, "train")[0] != load_reviews(folder, "test")[0]


def test_the_rehearsal_plan_keeps_the_shapes_and_cuts_the_counts(tmp_path):
    """Every stage of the gpt2 preset, each sweep at one value, seed 0; the inputs are the
    rehearsal's folders; each run takes 2 steps with a checkpoint at each, while the model, the
    lengths, the micro-batches, the generation batches and best-of-N are the preset's."""
    cfg = frontier.FrontierConfig(preset="gpt2", rehearse=True, out_dir=str(tmp_path), seeds=3)
    full = frontier.plan(frontier.FrontierConfig(preset="gpt2"))
    steps = frontier.plan(cfg)
    kinds = lambda plan: [type(c).__name__ for _, _, c in plan]
    assert sorted(set(kinds(steps))) == sorted(set(kinds(full)))  # every kind of stage
    assert len(steps) == len(kinds(full)) - 3 * 3 - 3  # one beta, alpha, target KL each
    paths = rehearse.inputs(str(tmp_path))
    by_name = {name: c for name, _, c in steps}
    full_by_name = {name: c for name, _, c in full}
    assert by_name["sft"].init == paths["base_model"] and by_name["sft"].dataset == paths["dataset"]
    assert by_name["pairs"].ground_truth == paths["ground_truth"]
    for name, _, c in steps:
        assert isinstance(steps[0][1], rehearse.Measured)
        real = full_by_name[name]
        for f in ("micro_batch", "gen_batch", "mini_batch", "max_len", "best_of", "chunk",
                  "n_prompts", "M", "samples", "score_batch"):
            assert getattr(c, f, None) == getattr(real, f, None), (name, f)
        if hasattr(c, "save_every") and hasattr(c, "steps"):
            assert c.steps == 2 and c.save_every == 1, name
    assert by_name["pairs"].n_prefixes == by_name["pairs"].chunk == 64
    final = steps[-1][2]
    assert final.n_prefixes == 1 and final.best_of == (4, 16, 64)
    ppo = by_name["PPO target KL=3.0"]
    assert ppo.batch_size == ppo.gen_batch == 128 and ppo.ppo_epochs == 1
    with pytest.raises(ValueError, match="--rehearse is for the presets that start from a GPT-2"):
        frontier.plan(dataclasses.replace(cfg, preset="tiny"))


@pytest.mark.slow  # ~15 min on 2 CPU cores (2 GB of inputs, 4 GB of runs, in a temp folder)
def test_the_gpt2_rehearsal_runs_every_stage_on_the_cpu(tmp_path, capsys):
    """frontier.py --preset gpt2 --rehearse, end to end on the CPU: GPT-2 124M and a
    RoBERTa-large ground truth with random weights, 25,000 + 25,000 reviews; every stage runs
    and is logged with its wall time and peak memory (printed), and every method has its rows in
    the frontier file."""
    cfg = frontier.FrontierConfig(preset="gpt2", rehearse=True, out_dir=str(tmp_path / "gpt2"),
                                  device="cpu")
    results = frontier.main(cfg)
    log = read_jsonl(str(tmp_path / "gpt2" / "rehearsal.jsonl"))
    with capsys.disabled():
        rehearse.print_rehearsal(str(tmp_path / "gpt2" / "rehearsal.jsonl"))
    assert [r["stage"] for r in log] == [name for name, _, _ in frontier.plan(cfg)]
    assert all(r["seconds"] > 0 and r["peak_rss_gb"] > 0.5 for r in log)  # > GPT-2's weights
    methods = {r["method"] for r in results}
    assert methods == {"SFT", "DPO", "Unlikelihood", "PPO", "PPO-GT", "Preferred-FT", "Best-of-N"}
    assert sorted(r["value"] for r in results if r["method"] == "Best-of-N") == list(
        PRESETS["gpt2"].best_of)
    assert all(r["n"] == 1 for r in results)  # one test prefix
    assert read_jsonl(str(tmp_path / "gpt2" / "optimum.jsonl"))
