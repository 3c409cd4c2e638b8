"""hh_tldr.py: the dialogue and summarization experiments' plans, and the tiny HH preset end to
end at a reduced size (data -> SFT on the chosen responses -> DPO -> RM -> win rates)."""

import dataclasses
import json
import os

import pytest
from conftest import write_cat_tldr

import sft

from hh_tldr import run as hh_tldr
from plumbing.runs import config_dict
from plumbing.utils import list_checkpoints, read_jsonl
from synthetic.dialogues import dialogue_vocab


def small(preset: dict) -> dict:
    p = {k: (dict(v) if isinstance(v, dict) else v) for k, v in preset.items()}
    p["data"] = {k: dict(v, n=200) for k, v in p["data"].items()}
    p["sft"].update(steps=20, eval_every=10, save_every=10, eval_size=32)
    p["dpo"].update(steps=10, eval_every=5, save_every=5, eval_size=32)
    p["rm"].update(eval_every=5, save_every=5, eval_size=32)
    p["winrate"].update(n=16, temperatures=(0.0, 1.0), best_of=2)
    if "select" in p:
        p["select"] = dict(p["select"], n=16)
    return p


def test_plans_of_every_preset(tmp_path):
    for experiment, preset in hh_tldr.PRESETS:
        steps = hh_tldr.plan(hh_tldr.ExperimentConfig(experiment=experiment, preset=preset,
                                                      out_dir=str(tmp_path)))
        names = [n for n, _, _ in steps if not n.startswith("data: ")]
        assert steps[0][0].startswith("data: ")
        chosen = "select" in hh_tldr.PRESETS[experiment, preset]  # the tiny presets only
        assert chosen == (preset == "tiny")
        # PPO and Preferred-FT: every preset but the tiny HH one (its results predate them)
        more = (experiment, preset) != ("hh", "tiny")
        choose = lambda name, chosen=chosen: [name] + [f"choose {name} checkpoint"] * chosen
        expected = (choose("SFT") + choose("DPO") + ["reward model"]
                    + (choose("PPO") + choose("Preferred-FT")) * more + ["win rates"])
        assert [n.split(" beta=")[0] for n in names] == expected
        by = {n: c for n, _, c in steps}
        policies = ["SFT", "DPO"] + ["PPO", "Preferred-FT"] * more
        assert [s.split("=")[0] for s in by["win rates"].policies] == policies
        if more:  # PPO from SFT on the train pairs' prompts, its reward the RM; Preferred-FT
            # from SFT on their chosen responses
            assert by["PPO"].init == by["SFT"].out_dir == by["Preferred-FT"].init
            assert by["PPO"].prompts == by["data: train"].out == by["Preferred-FT"].pairs
            assert by["PPO"].reward == "rm" and by["PPO"].rm == by["reward model"].out_dir
            win = by["win rates"]
            assert by["PPO"].max_new_tokens == win.max_new_tokens
            assert win.judge_pairs == (by["data: judge"].out if experiment == "tldr" else "")
        if chosen:  # each chooses among its own run's checkpoints, on the validation split
            by = {n: c for n, _, c in steps}
            assert by["choose SFT checkpoint"].out_dir == by["SFT"].out_dir
            assert by["choose DPO checkpoint"].out_dir == by[names[2]].out_dir
            assert by["choose SFT checkpoint"].validation == by["data: validation"].out
        sft_cfg = dict((n, c) for n, _, c in steps)["SFT"]
        if experiment == "tldr":  # TL;DR's SFT: post + reference summary
            assert sft_cfg.completions and not sft_cfg.pairs
        else:  # HH's SFT: the chosen responses of the train pairs
            assert sft_cfg.pairs and not sft_cfg.completions
    with pytest.raises(ValueError, match="not a preset"):
        hh_tldr.plan(hh_tldr.ExperimentConfig(experiment="tldr", preset="paper"))


def test_tiny_hh_end_to_end_and_rerun(tmp_path, monkeypatch):
    monkeypatch.setitem(hh_tldr.PRESETS, ("hh", "tiny"), small(hh_tldr.PRESETS["hh", "tiny"]))
    cfg = hh_tldr.ExperimentConfig(out_dir=str(tmp_path / "hh"), device="cpu")
    results = hh_tldr.main(cfg)
    assert {r["policy"] for r in results} == {"SFT", "DPO", "Best of 2"}
    assert {r["temperature"] for r in results} == {0.0, 1.0}
    for r in results:
        assert r["n"] == 16 and 0 <= r["win_rate"] <= 1 and r["expected"]
        # SFT and DPO (and Best-of-N, SFT's samples) at their chosen checkpoints
        assert r["checkpoint"].endswith(os.path.join("dpo" if r["policy"] == "DPO" else "sft",
                                                     "best"))
    for name in ("sft", "dpo"):
        chosen = json.loads((tmp_path / "hh" / name / "selected.json").read_text())
        assert (tmp_path / "hh" / name / f"step_{chosen['step']:06d}").is_dir()
    # pruned as frontier.py prunes: no state.pt in a finished run, the RM its best/ alone
    for name in ("sft", "dpo", "rm"):
        assert not (tmp_path / "hh" / name / "state.pt").exists()
    assert not list_checkpoints(str(tmp_path / "hh" / "rm"))
    assert (tmp_path / "hh" / "rm" / "best" / "reward_head.json").is_file()
    out = tmp_path / "hh" / "winrate"
    assert read_jsonl(str(out / "winrate.jsonl")) == results
    assert {r["data"] for r in results} == {"synthetic (test)"}  # the plot's title
    # drawn again once correct.jsonl is there: three panels side by side (the judge's win rates,
    # the rule's, the correct share), 16.5 inches at 120 dpi
    assert int.from_bytes((out / "winrate.png").read_bytes()[16:20], "big") == 1980
    assert all(r["rule"] == "dialogue" and 0 <= r["rule_win_rate"] <= 1 for r in results)
    sft_ckpt = list_checkpoints(str(tmp_path / "hh" / "sft"))[-1][1]
    with open(os.path.join(sft_ckpt, "compact_vocab.json")) as f:  # the dialogue vocabulary
        assert json.load(f) == dialogue_vocab()
    # a rerun skips every finished step and gives the same results
    before = os.path.getmtime(tmp_path / "hh" / "dpo" / "done")
    assert hh_tldr.main(cfg) == results
    assert os.path.getmtime(tmp_path / "hh" / "dpo" / "done") == before
    # another config in the same folder is refused, not silently reused
    edited = small(hh_tldr.PRESETS["hh", "tiny"])
    edited["dpo"]["beta"] = 0.5
    monkeypatch.setitem(hh_tldr.PRESETS, ("hh", "tiny"), edited)
    with pytest.raises(ValueError, match="another config"):
        hh_tldr.main(cfg)
    edited = small(hh_tldr.PRESETS["hh", "tiny"])
    edited["data"]["train"]["max_length"] = 60
    monkeypatch.setitem(hh_tldr.PRESETS, ("hh", "tiny"), edited)
    with pytest.raises(ValueError, match="train.jsonl was written with another config"):
        hh_tldr.main(cfg)


def test_base_model_tokenizes_the_data_and_a_bad_judge_fails_first(tmp_path, monkeypatch):
    cfg = hh_tldr.ExperimentConfig(out_dir=str(tmp_path), base_model="/models/gpt2")
    steps = hh_tldr.plan(cfg)
    data = [c for name, _, c in steps if name.startswith("data: ")]
    assert data and all(c.tokenizer == "/models/gpt2" for c in data)
    calls = []
    monkeypatch.setattr(hh_tldr, "preferences_main", lambda c: calls.append(c))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        hh_tldr.main(hh_tldr.ExperimentConfig(out_dir=str(tmp_path), judge="openai:gpt-4"))
    assert calls == []  # nothing ran


H, A = "\n\nHuman:", "\n\nAssistant:"


def write_hh_hub_layout(folder, n=12, cut=None):
    """Anthropic/hh-rlhf's hub layout: <subset>/{train,test}.jsonl.gz of chosen/rejected
    transcripts. cut: the subset whose train file ends in a line cut off."""
    import gzip

    for subset in ("helpful-base", "harmless-base"):
        os.makedirs(folder / subset, exist_ok=True)
        for split in ("train", "test"):
            lines = [json.dumps(dict(chosen=f"{H} {subset} {split} question {i}?{A} Yes, {i}.",
                                     rejected=f"{H} {subset} {split} question {i}?{A} No."))
                     for i in range(n)]
            text = "\n".join(lines) + "\n"
            if subset == cut and split == "train":
                text = text[:-12]  # the last line loses its end (a copy cut short)
            with gzip.open(folder / subset / f"{split}.jsonl.gz", "wt") as f:
                f.write(text)
    return str(folder)


def test_gpu_presets_read_local_datasets(tmp_path):
    """--dataset (and TL;DR's --sft_dataset) put local folders in the hub layouts where the preset
    names hub datasets; the data steps convert them; a file converted by hand with the same flags
    is reused, with other flags refused naming the flag."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hh_tldr.preferences import PreferencesConfig
    from hh_tldr.preferences import main as convert

    hh = write_hh_hub_layout(tmp_path / "hh-rlhf")
    cfg = hh_tldr.ExperimentConfig(experiment="hh", preset="gpt2", dataset=hh,
                                   out_dir=str(tmp_path / "hh_run"))
    data = [c for name, _, c in hh_tldr.plan(cfg) if name.startswith("data: ")]
    assert [(c.dataset, c.split) for c in data] == [(hh, "train"), (hh, "test")]
    for c in data:
        assert not hh_tldr.finished(c)
        convert(c)
        assert hh_tldr.finished(c)
    assert [len(read_jsonl(c.out)) for c in data] == [24, 24]  # both subsets
    # converted by hand (python -m hh_tldr.preferences) with the step's flags: reused
    os.remove(data[0].out)
    os.remove(data[0].out + ".config.json")
    convert(PreferencesConfig(dataset=hh, split="train", out=data[0].out))
    assert hh_tldr.finished(data[0])
    convert(PreferencesConfig(dataset=hh, split="train", out=data[0].out, max_length=400))
    with pytest.raises(ValueError, match="another config .*max_length: 400 there, 512 now"):
        hh_tldr.finished(data[0])

    # TL;DR: the comparisons and the SFT set (its train and test splits), parquet in data/
    posts = [f"SUBREDDIT: r/cats POST: my cat number {i} sleeps all day." for i in range(8)]
    for name, split, rows in (
            ("cmp", "train", [dict(prompt=p, chosen="TL;DR: cat sleeps", rejected="TL;DR: no")
                              for p in posts]),
            ("cmp", "test", [dict(prompt=p, chosen="TL;DR: cat naps", rejected="TL;DR: no")
                             for p in posts]),
            ("sft", "train", [dict(prompt=p + "\nTL;DR:", label=" cat sleeps") for p in posts]),
            ("sft", "test", [dict(prompt=p + "\nTL;DR:", label=" cat naps") for p in posts])):
        os.makedirs(tmp_path / name / "data", exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows),
                       tmp_path / name / "data" / f"{split}-00000-of-00001-abc.parquet")
    cfg = hh_tldr.ExperimentConfig(experiment="tldr", preset="gpt2", dataset=str(tmp_path / "cmp"),
                                   sft_dataset=str(tmp_path / "sft"),
                                   out_dir=str(tmp_path / "tldr_run"))
    data = {name[6:]: c for name, _, c in hh_tldr.plan(cfg) if name.startswith("data: ")}
    assert {k: (os.path.basename(c.dataset), c.split) for k, c in data.items()} == {
        "train": ("cmp", "train"), "test": ("sft", "test"), "sft": ("sft", "train"),
        "judge": ("cmp", "test")}  # held-out comparisons: the judge's accuracy
    formats = {k: convert(c)["format"] for k, c in data.items()}
    assert formats == {"train": "tldr", "test": "tldr_sft", "sft": "tldr_sft", "judge": "tldr"}
    assert read_jsonl(data["test"].out)[0]["completion"] == " cat naps"

    with pytest.raises(ValueError, match="--sft_dataset: hh's SFT"):
        hh_tldr.plan(hh_tldr.ExperimentConfig(preset="gpt2", sft_dataset=hh))
    with pytest.raises(ValueError, match="tiny preset trains on the synthetic dialogues"):
        hh_tldr.plan(hh_tldr.ExperimentConfig(preset="tiny", dataset=hh))


def test_cut_off_jsonl_line_is_one_error_line_and_writes_nothing(tmp_path):
    """A local HH copy whose train file ends in a cut-off line, through the command line: one
    `error:` line naming the file and the line (not datasets' traceback), nothing written."""
    import subprocess
    import sys

    hh = write_hh_hub_layout(tmp_path / "hh-rlhf", cut="harmless-base")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "hh_tldr.run", "--experiment", "hh", "--preset",
                        "gpt2", "--dataset", hh, "--out_dir", str(out)],
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip()]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert sum("error:" in ln for ln in lines) == 1, lines
    bad = os.path.join(hh, "harmless-base", "train.jsonl.gz")
    assert lines[-1] == f"error: could not read {bad}:12: not a JSON object (a line cut off?)"
    assert not out.exists()


def test_gpt2_presets_save_the_rm_rarely_and_plan_their_disk(tmp_path, capsys):
    """--plan: the RM of a GPU preset writes a few checkpoints (each 0.5 GB), and its step
    checkpoints and every state.pt go once a run is done: the peak and the end in GB."""
    for experiment in ("hh", "tldr"):
        cfg = hh_tldr.ExperimentConfig(experiment=experiment, preset="gpt2", plan=True,
                                       out_dir=str(tmp_path / experiment))
        plan = hh_tldr.main(cfg)
        assert not (tmp_path / experiment).exists()  # a plan runs nothing
        rm = next(r for r in plan["rows"] if r["name"] == "reward model")
        assert rm["best"] and rm["ckpts"] <= 4 and rm["ckpt_bytes"] > 4.9e8
        (peak, _, end), (_, _, end_kept) = plan["pruned"], plan["keep_checkpoints"]
        assert peak < 8.5e9 and end < 5e9 < end_kept  # the RM every 100 steps: 17 GB
    assert "* disk" in capsys.readouterr().out


def test_sft_on_completions(tmp_path):
    rows = [dict(prompt_ids=[1, 2, i % 7 + 3], completion_ids=[4, 5, 6, 0], prompt="p",
                 completion="c") for i in range(40)]
    path = tmp_path / "completions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = sft.SFTConfig(init="scratch", dataset="synthetic", completions=str(path),
                        out_dir=str(tmp_path / "run"), steps=3, batch_size=8, micro_batch=8,
                        eval_every=3, save_every=3, eval_size=8, n_embd=16, device="cpu")
    (train_p, train_c), (held_p, held_c) = sft.build_data(cfg, None)
    assert len(train_p) + len(held_p) == 40 and held_p
    assert not {tuple(p) for p in train_p} & {tuple(p) for p in held_p}  # whole prompts held out
    history = sft.main(cfg)
    assert any("loss/eval" in r for r in history)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(dict(rows[0], completion_ids=[1.5])) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: completion_ids"):
        sft.build_data(sft.SFTConfig(completions=str(bad)), None)
    with pytest.raises(ValueError, match="pass one"):
        sft.build_data(sft.SFTConfig(completions=str(path), pairs=str(path)), None)


def test_tldr_layout_trains_sft_then_dpo(tmp_path):
    # TL;DR-layout parquet files -> preferences.py -> sft.py --completions -> the unchanged dpo.py
    import dpo

    pairs, completions = write_cat_tldr(str(tmp_path))
    small = dict(steps=2, batch_size=4, micro_batch=4, eval_every=2, save_every=2, eval_size=4,
                 device="cpu")
    sft.main(sft.SFTConfig(init="scratch", vocab="gpt2", completions=completions, n_embd=16,
                           block_size=64, out_dir=str(tmp_path / "sft_run"), **small))
    history = dpo.main(dpo.DPOConfig(init=str(tmp_path / "sft_run"), pairs=pairs, beta=0.5,
                                     out_dir=str(tmp_path / "dpo_run"), **small))
    assert abs(history[0]["loss/eval"] - 0.6931) < 1e-3  # policy = reference at step 0: log 2
    assert os.path.exists(tmp_path / "dpo_run" / "done")


def test_mean_over_seeds_by_hand():
    row = dict(policy="SFT", temperature=0.0, judge="rm:x", task="dialogue", expected=True)
    per_seed = [[dict(row, win_rate=w)] for w in (0.4, 0.6)]
    correct = [[dict(policy="SFT", temperature=0.0, correct=c)] for c in (0.5, 1.0)]
    [r] = hh_tldr.mean_over_seeds(per_seed, correct)
    # mean 0.5, sample sd sqrt(0.02) = 0.1414, / sqrt(2 seeds) = 0.1; correct: 0.75, 0.25
    assert r["seeds"] == 2 and r["win_rate"] == pytest.approx(0.5)
    assert r["stderr"] == pytest.approx(0.1)
    assert (r["correct"], r["correct_stderr"]) == (pytest.approx(0.75), pytest.approx(0.25))
    assert r["judge"] == "rm:x"  # one judge for every seed: named; one per seed: said so
    per_seed[1][0]["judge"] = "rm:y"
    assert hh_tldr.mean_over_seeds(per_seed, correct)[0]["judge"] == "rm: each seed's own"
    # a seed whose comparisons all failed (win rate None) is left out; one seed left: no stderr
    [r] = hh_tldr.mean_over_seeds([[dict(row, win_rate=0.7)], [dict(row, win_rate=None)]], [])
    assert r["win_rate"] == pytest.approx(0.7) and r["stderr"] is None and "correct" not in r


def test_correct_shares_apply_the_dialogues_rule(tmp_path):
    q = "Human: What is two plus two?\n\nAssistant:"
    rows = [dict(policy="DPO", temperature=0.0, prompt=q, response=r)
            for r in ("Two plus two is four.", "Sure! Two plus two is four.",
                      "Two plus two is five.", "A. A. A.")]
    rows.append(dict(policy="SFT", temperature=1.0, prompt=q, response="Two plus two is four."))
    with open(tmp_path / "comparisons.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    shares = {(r["policy"], r["temperature"]): r for r in hh_tldr.correct_shares(str(tmp_path))}
    assert shares["DPO", 0.0]["correct"] == 0.5 and shares["DPO", 0.0]["n"] == 4
    assert shares["DPO", 0.0]["stderr"] == pytest.approx((0.5 * 0.5 / 4) ** 0.5)
    assert shares["SFT", 1.0]["correct"] == 1.0 and shares["SFT", 1.0]["stderr"] == 0.0


def test_tiny_hh_seeds(tmp_path, monkeypatch):
    monkeypatch.setitem(hh_tldr.PRESETS, ("hh", "tiny"), small(hh_tldr.PRESETS["hh", "tiny"]))
    out = tmp_path / "hh"
    rows = hh_tldr.main(hh_tldr.ExperimentConfig(out_dir=str(out), device="cpu", seeds=2))
    for name in ("sft", "dpo", "rm", "winrate"):  # seed 0 where one seed puts it, seed 1 beside
        assert (out / name).is_dir() and (out / f"{name}_seed1").is_dir()
    assert json.loads((out / "dpo_seed1" / "run_config.json").read_text())["seed"] == 1
    seeds = [read_jsonl(str(out / w / "winrate.jsonl")) for w in ("winrate", "winrate_seed1")]
    shares = [read_jsonl(str(out / w / "correct.jsonl")) for w in ("winrate", "winrate_seed1")]
    assert read_jsonl(str(out / "winrate_seeds.jsonl")) == rows
    assert {r["data"] for r in rows} == {"synthetic (test)"}  # winrate_seeds.png's title
    assert (out / "winrate_seeds.png").stat().st_size > 0
    assert len(rows) == len(seeds[0]) == 6  # SFT, DPO, Best of 2 at T = 0 and 1
    share = [{(c["policy"], c["temperature"]): c["correct"] for c in s} for s in shares]
    for k, r in enumerate(rows):
        key = (r["policy"], r["temperature"])
        assert r["seeds"] == 2 and key == (seeds[0][k]["policy"], seeds[0][k]["temperature"])
        assert r["win_rate"] == pytest.approx((seeds[0][k]["win_rate"] +
                                               seeds[1][k]["win_rate"]) / 2)
        assert r["correct"] == pytest.approx((share[0][key] + share[1][key]) / 2)


def test_select_checkpoint_takes_the_most_often_right(tmp_path, monkeypatch):
    """The choice among a run's checkpoints, with the sampling stubbed so that each checkpoint's
    answers are known: the mean correct share over the temperatures decides, the earliest of
    equals wins, the winner is copied whole to best/, which the run folder then stands for."""
    from types import SimpleNamespace

    import torch

    from data import Tokenizer

    from hh_tldr.preferences import ASSISTANT
    from plumbing.utils import resolve_checkpoint

    tok = Tokenizer(dialogue_vocab())
    run = tmp_path / "dpo"
    # per step: (right at T=0, right at T=1), every prompt alike
    plan = {100: (False, False), 200: (True, False), 300: (True, True), 400: (True, True)}
    for step in plan:
        folder = run / f"step_{step:06d}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"step": step}))
        (folder / "model.safetensors").write_text(f"weights {step}")
        tok.save(str(folder))
    questions = {"What is two plus two?": ("Two plus two is four.", "Two plus two is five."),
                 "What color is grass?": ("Grass is green.", "Grass is red.")}
    val = tmp_path / "validation.jsonl"
    ids = lambda text: tok.encode(text)
    with open(val, "w") as f:
        for q, (right, wrong) in questions.items():
            prompt = f"\n\nHuman: {q}{ASSISTANT}"
            f.write(json.dumps(dict(prompt=prompt, prompt_ids=ids(prompt), chosen=" " + right,
                                    chosen_ids=ids(" " + right), rejected=" " + wrong,
                                    rejected_ids=ids(" " + wrong))) + "\n")

    class Stub:  # stands for a loaded checkpoint: which step it is
        def __init__(self, folder):
            self.step = json.loads(open(os.path.join(folder, "config.json")).read())["step"]
            self.config = type("C", (), {"block_size": 64})
            self.transformer = SimpleNamespace(wte=SimpleNamespace(weight=torch.zeros(1)))

        def to(self, device):
            return self

        def eval(self):
            return self

    monkeypatch.setattr(hh_tldr.GPT, "from_pretrained", staticmethod(Stub))
    monkeypatch.setattr(hh_tldr, "speed_up", lambda model: model)
    seen = []

    def sample(model, prompts, batch_size, g, eos, max_new_tokens, temperature):
        seen.append((model.step, temperature, len(prompts)))
        right = plan[model.step][0 if temperature == 0.0 else 1]
        texts = [tok.decode(p) for p in prompts]
        answer = lambda t: next(v for q, v in questions.items() if q in t)[0 if right else 1]
        return [ids(" " + answer(t)) for t in texts]

    from hh_tldr import winrate
    monkeypatch.setattr(winrate, "sample_completions", sample)  # the win rates' sampler
    cfg = hh_tldr.SelectConfig(out_dir=str(run), validation=str(val), n=0, device="cpu")
    assert not hh_tldr.finished(cfg)
    result = hh_tldr.select_checkpoint(cfg)
    assert [(r["step"], r["score"]) for r in result["scores"]] == [
        (100, 0.0), (200, 0.5), (300, 1.0), (400, 1.0)]
    assert result["step"] == 300  # 300 and 400 are equal: the earlier one
    assert sorted(seen) == [(s, t, 2) for s in plan for t in (0.0, 1.0)]
    best = run / "best"
    assert (best / "model.safetensors").read_text() == "weights 300"
    assert sorted(os.listdir(best)) == sorted(os.listdir(run / "step_000300"))
    assert resolve_checkpoint(str(run)) == str(best)  # what DPO, the RM and win rates load
    saved = json.loads((run / "selected.json").read_text())
    assert saved["step"] == 300 and saved["config"]["validation"] == str(val)
    assert hh_tldr.finished(cfg)  # a rerun skips it
    with pytest.raises(ValueError, match="another config"):
        hh_tldr.finished(hh_tldr.SelectConfig(out_dir=str(run), validation=str(val), n=1))
    (run / "selected.json").unlink()  # killed after the copy, before its record: chosen again
    assert not hh_tldr.finished(cfg)
    with pytest.raises(ValueError, match="no checkpoint"):
        hh_tldr.select_checkpoint(hh_tldr.SelectConfig(out_dir=str(tmp_path / "none"),
                                                       validation=str(val)))


def test_tiny_tldr_every_policy_by_judge_and_rule_over_seeds(tmp_path, monkeypatch):
    """The TL;DR miniature end to end at a few steps, 2 seeds: SFT on the references, DPO, the
    RM, PPO on the train pairs' prompts, Preferred-FT, each chosen on validation by the rule;
    the win rates of all four and Best-of-N by the judge and by the rule, the judge's accuracy
    on the held-out comparisons (vs labels and vs rule), and their mean ± SE over the seeds."""
    p = small(hh_tldr.PRESETS["tldr", "tiny"])
    p["ppo"] = dict(p["ppo"], steps=4, batch_size=32, gen_batch=32, mini_batch=32, save_every=2,
                    eval_every=2)
    p["preferred_ft"] = dict(p["preferred_ft"], steps=6, save_every=3, eval_every=3,
                             eval_size=32)
    p["winrate"].update(judge_n=40)
    monkeypatch.setitem(hh_tldr.PRESETS, ("tldr", "tiny"), p)
    out = tmp_path / "tldr"
    rows = hh_tldr.main(hh_tldr.ExperimentConfig(experiment="tldr", out_dir=str(out),
                                                 device="cpu", seeds=2))
    policies = ["SFT", "DPO", "PPO", "Preferred-FT", "Best of 2"]
    assert [r["policy"] for r in rows] == [x for x in policies for _ in (0.0, 1.0)]
    seeds = [read_jsonl(str(out / w / "winrate.jsonl")) for w in ("winrate", "winrate_seed1")]
    for name in ("sft", "dpo", "ppo", "preferred_ft"):  # each chosen by the rule on validation
        chosen = json.loads((out / name / "selected.json").read_text())
        assert chosen["config"]["rule"] == "summary"
        assert all(r["checkpoint"].endswith(os.path.join(name, "best"))
                   for r in seeds[0] if r["policy"].lower().replace("-", "_") == name)
    ppo_log = read_jsonl(str(out / "ppo" / "log.jsonl"))
    assert len(ppo_log) == 4 and ppo_log[0]["kl/seq"] == pytest.approx(0.0, abs=1e-4)
    judged = read_jsonl(str(out / "winrate" / "judged_pairs.jsonl"))
    assert len(judged) == 40  # of the held-out comparisons, never trained on
    for k, r in enumerate(rows):
        assert r["seeds"] == 2 and r["rule"] == "summary" and r["judge_accuracy_vs"] == "labels"
        for key in ("win_rate", "rule_win_rate", "judge_accuracy", "judge_accuracy_rule"):
            assert r[key] == pytest.approx((seeds[0][k][key] + seeds[1][k][key]) / 2)
            assert 0 <= r[key] <= 1
        # the rule's win rate, by hand from seed 0's comparisons
    comps = [c for c in read_jsonl(str(out / "winrate" / "comparisons.jsonl"))
             if c["policy"] == "PPO" and c["temperature"] == 1.0]
    from synthetic.summaries import summary_reward
    wins = [(summary_reward(c["prompt"], c["response"]) > summary_reward(c["prompt"],
                                                                          c["reference"]))
            + 0.5 * (summary_reward(c["prompt"], c["response"]) == summary_reward(
                c["prompt"], c["reference"])) for c in comps]
    ppo1 = next(r for r in seeds[0] if r["policy"] == "PPO" and r["temperature"] == 1.0)
    assert ppo1["rule_win_rate"] == pytest.approx(sum(wins) / len(wins))
    assert (out / "winrate_seeds.png").stat().st_size > 0


def test_a_choice_made_before_the_rule_flag_is_still_finished(tmp_path):
    """selected.json written before SelectConfig had `rule` (the dialogues were the only rule):
    still finished for rule="dialogue", its default; another rule is another config, refused."""
    cfg = hh_tldr.SelectConfig(out_dir=str(tmp_path), validation="v.jsonl")
    old = {k: v for k, v in config_dict(cfg).items() if k != "rule"}
    (tmp_path / "best").mkdir()
    (tmp_path / "selected.json").write_text(json.dumps(dict(config=old, scores=[], step=1)))
    assert hh_tldr.finished(cfg)
    with pytest.raises(ValueError, match="chosen with another config"):
        hh_tldr.finished(dataclasses.replace(cfg, rule="summary"))
