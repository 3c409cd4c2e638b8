"""hh_tldr.run --rehearse (hh_tldr/rehearse.py): the gpt2 presets' every stage at their real
shapes, cut to a couple of steps, on a random GPT-2 and synthetic data written in the hub layouts.
The data is read by the real loaders as local --dataset folders; the plan keeps the shapes and
cuts the counts; the slow test runs both rehearsals end to end on the CPU."""

import dataclasses
import os

import pytest

from data import gpt2_encoding
from reward import RMConfig

from hh_tldr import rehearse
from hh_tldr import run as hh_tldr
from hh_tldr.preferences import PreferencesConfig
from hh_tldr.preferences import main as convert
from hh_tldr.winrate import WinRateConfig
from plumbing.rehearse import Measured
from plumbing.utils import read_jsonl


def test_the_data_written_is_read_by_the_loaders_at_the_real_lengths(tmp_path):
    """HH's jsonl.gz subsets and TL;DR's two parquet sets, converted by preferences.py as the
    rehearsal's data steps do: every row kept, as pairs and completions, at the real data's
    lengths (HH transcripts of a few hundred tokens, TL;DR posts too and summaries of ~30)."""
    enc, n = gpt2_encoding(), 12
    for experiment in ("hh", "tldr"):
        paths = rehearse.inputs(str(tmp_path), experiment)
        writers = ({"dataset": rehearse.write_hh} if experiment == "hh" else
                   {"dataset": rehearse.write_tldr_comparisons,
                    "sft_dataset": rehearse.write_tldr_sft})
        for key, writer in writers.items():
            os.makedirs(paths[key])
            writer(paths[key], n)
        cfg = hh_tldr.ExperimentConfig(experiment=experiment, preset="gpt2",
                                       out_dir=str(tmp_path / experiment),
                                       **{k: v for k, v in paths.items() if k != "base_model"})
        data = {name[6:]: c for name, _, c in hh_tldr.plan(cfg) if name.startswith("data: ")}
        stats = {k: convert(c) for k, c in data.items()}
        rows = {k: read_jsonl(c.out) for k, c in data.items()}
        assert {k: len(r) for k, r in rows.items()} == {
            k: n if k not in ("test", "judge") else rehearse.N_TEST for k in data}
        assert all(s["written"] == s["rows"] for s in stats.values())  # none dropped
        first = rows["train"][0]
        if experiment == "hh":
            assert sorted(os.listdir(paths["dataset"])) == sorted(rehearse.HH_SUBSETS)
            assert first["prompt"].count("\n\nHuman:") == 3
            length = len(first["prompt_ids"]) + len(first["chosen_ids"])
            assert 200 < length < 512
        else:
            assert stats["train"]["format"] == "tldr" and stats["sft"]["format"] == "tldr_sft"
            assert first["prompt"].endswith("TL;DR:") and first["prompt"].startswith("SUBREDDIT")
            assert 150 < len(first["prompt_ids"]) < 400
            assert 15 < len(enc.encode_ordinary(rows["sft"][0]["completion"])) < 50


def test_the_rehearsal_plan_keeps_the_shapes_and_cuts_the_counts(tmp_path):
    """Every stage of the gpt2 preset, seed 0, on the rehearsal's folders, timed; each run 2 steps
    with a checkpoint at each and a batch of 2 micro-batches, the lengths, micro-batches and the
    win rates' generation and best-of-N the preset's, one test prompt at T = 0 and 1."""
    for experiment in ("hh", "tldr"):
        cfg = hh_tldr.ExperimentConfig(experiment=experiment, preset="gpt2", rehearse=True,
                                       out_dir=str(tmp_path), seeds=3)
        full = hh_tldr.plan(hh_tldr.ExperimentConfig(experiment=experiment, preset="gpt2"))
        steps = hh_tldr.plan(cfg)
        assert [name for name, _, _ in steps] == [name for name, _, _ in full]  # one seed
        paths = rehearse.inputs(str(tmp_path), experiment)
        by_name = {name: c for name, _, c in steps}
        for (name, fn, c), (_, _, real) in zip(steps, full):
            assert isinstance(fn, Measured) and fn.name == name
            assert fn.log == str(tmp_path / "rehearsal.jsonl")
            for f in ("micro_batch", "max_len", "max_length", "max_prompt_length",
                      "max_new_tokens", "best_of"):
                assert getattr(c, f, None) == getattr(real, f, None), (name, f)
            if hasattr(c, "mini_batch"):  # PPO: one generate() of gen_batch, one pass
                assert c.batch_size == max(c.gen_batch, c.mini_batch) < real.batch_size, name
                assert c.ppo_epochs == 1 and c.prompts == by_name["data: train"].out, name
            elif hasattr(c, "micro_batch"):
                assert c.batch_size == 2 * c.micro_batch < real.batch_size, name
            if getattr(c, "steps", None):
                assert c.steps == 2 and c.save_every == 1, name
            if isinstance(c, PreferencesConfig):
                assert c.dataset in (paths["dataset"], paths.get("sft_dataset"))
                assert c.tokenizer == paths["base_model"]
        by_type = {type(c): c for _, _, c in steps}
        assert by_name["SFT"].init == paths["base_model"]
        assert by_type[RMConfig].epochs == 1
        w = by_type[WinRateConfig]
        assert w.n == 1 and w.temperatures == (0.0, 1.0) and w.best_of == 16 and w.judge_n == 4
        assert w.judge.startswith("rm:")
    default = hh_tldr.plan(hh_tldr.ExperimentConfig(experiment="tldr", preset="gpt2",
                                                    rehearse=True))
    assert default[-1][2].out_dir == os.path.join("runs", "tldr_gpt2_rehearsal", "winrate")
    with pytest.raises(ValueError, match="--rehearse is for the presets that start from a GPT-2"):
        hh_tldr.plan(dataclasses.replace(cfg, experiment="hh", preset="tiny"))


@pytest.mark.slow  # both rehearsals: a random GPT-2 124M, every stage on the CPU
def test_the_gpt2_rehearsals_run_every_stage_on_the_cpu(tmp_path, capsys):
    """hh_tldr.run --preset gpt2 --rehearse for hh and tldr, end to end on the CPU: every stage
    runs and is logged with its wall time and peak memory (printed), into win-rate files with
    SFT, DPO, PPO, Preferred-FT and Best-of-16 at T = 0 and 1, and the judge's accuracy."""
    for experiment in ("hh", "tldr"):
        out = tmp_path / experiment
        cfg = hh_tldr.ExperimentConfig(experiment=experiment, preset="gpt2", rehearse=True,
                                       out_dir=str(out), device="cpu")
        results = hh_tldr.main(cfg)
        with capsys.disabled():
            print(f"\n{experiment}:")
            hh_tldr.print_rehearsal(str(out / "rehearsal.jsonl"))
        log = read_jsonl(str(out / "rehearsal.jsonl"))
        steps = hh_tldr.plan(cfg)
        assert [r["stage"] for r in log] == [name for name, _, _ in steps]
        for r, (_, _, c) in zip(log, steps):  # each stage past the data's holds a GPT-2's weights
            data = isinstance(c, PreferencesConfig)
            assert r["seconds"] >= 0 and r["peak_rss_gb"] > (0.1 if data else 0.5), r
        assert read_jsonl(str(out / "winrate" / "winrate.jsonl")) == results
        assert {(r["policy"], r["temperature"]) for r in results} == {
            (p, t) for p in ("SFT", "DPO", "PPO", "Preferred-FT", "Best of 16")
            for t in (0.0, 1.0)}
        assert all(r["n"] == 1 and r["judge"].startswith("rm:") for r in results)
        assert all(r["judge_accuracy_n"] == 4 for r in results)  # held-out pairs judged
