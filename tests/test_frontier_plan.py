"""frontier.py --plan (plumbing/plan.py) against what a sweep really writes, and the sweep's
pruning (plumbing/prune.py): each sweep run evaluated as soon as it is done, then only its last
checkpoint kept."""

import dataclasses
import json
import os

import pytest

import evaluate
import frontier

from plumbing import plan as budget
from plumbing import presets, prune
from plumbing.utils import list_checkpoints, read_jsonl


def mini_preset(ground_truth: str) -> presets.Preset:
    """The tiny preset cut down to seconds: one value per sweep, a few steps per run, a few
    checkpoints each, the session pipeline's label classifier as the ground truth."""
    t = presets.PRESETS["tiny"]
    return dataclasses.replace(
        t, ground_truth=ground_truth,
        sft=dict(t.sft, steps=20, batch_size=16, micro_batch=16, warmup=5, eval_every=10,
                 save_every=10),
        pairs=dict(n_prefixes=64, chunk=32),
        # 384 pairs, 30 held out: 354 // 64 = 5 steps whatever few ties pairs.py drops
        rm=dict(epochs=1, batch_size=64, micro_batch=32, lr=1e-3, warmup=2, eval_every=2,
                save_every=2, eval_size=30),
        dpo=dict(steps=6, batch_size=16, micro_batch=16, lr=5e-5, warmup=2, save_every=2,
                 eval_every=3, eval_size=32),
        betas=(0.1,), alphas=(1.0,),
        pft=dict(steps=4, batch_size=16, micro_batch=16, lr=2e-4, warmup=2, save_every=2,
                 eval_every=2, eval_size=32),
        ppo=dict(steps=4, batch_size=16, gen_batch=16, mini_batch=16, micro_batch=16, lr=1e-4,
                 n_prompts=200, save_every=2, normalize_score=True, horizon=32,
                 init_kl_coef=0.1),
        target_kls=(3.0,), eval=dict(n_prefixes=16, micro_batch=16), best_of=(2,))


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


# ----------------------------------------------------------------------------- the plan alone


@pytest.mark.parametrize("preset", list(presets.PRESETS))
def test_plan_prints_every_step_and_runs_nothing(preset, monkeypatch, capsys):
    import model

    def refuse(*a, **k):
        raise AssertionError("--plan loaded or ran something")

    for name in ("sft_main", "rm_train", "pairs_main", "dpo_main", "ppo_main", "optimum_main",
                 "evaluate_main"):
        monkeypatch.setattr(frontier, name, refuse)
    monkeypatch.setattr(model.GPT, "from_pretrained", refuse)
    cfg = frontier.FrontierConfig(preset=preset, plan=True)
    got = frontier.main(cfg)
    out = capsys.readouterr().out
    steps = frontier.plan(cfg)
    assert len(got["rows"]) == len(steps)
    for name, _, _ in steps:
        assert name in out
    assert "peak" in out and "estimate" in out and "--keep_checkpoints" in out
    pruned, keep_all = got["disk"]["pruned"], got["disk"]["keep_checkpoints"]
    assert pruned[0] <= keep_all[0] and pruned[2] < keep_all[2]
    assert got["disk"]["no_keep_last"][2] < pruned[2]


def test_plan_on_the_command_line():
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "frontier.py", "--preset", "paper", "--plan"], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "gpt2-large (774.0M parameters)" in p.stdout and "3.10 GB each" in p.stdout
    assert "estimated from docs/benchmarks.md" in p.stdout


def test_plan_of_the_presets_numbers():
    def rows(preset):
        cfg = frontier.FrontierConfig(preset=preset)
        return {r["name"]: r for r in budget.budget(cfg, frontier.plan(cfg))[0]}, \
            budget.sizes(cfg)

    tiny, sz = rows("tiny")  # the caps: early stopping may end a run sooner
    assert [tiny[n]["ckpts"] for n in ("sft", "ground truth", "reward model", "DPO beta=0.1",
                                       "Preferred-FT seed=0", "PPO target KL=3.0")] == \
        [3, 4, 6, 11, 11, 10]
    assert tiny["reward model"]["steps"] == 551 and tiny["ground truth"]["steps"] == 625
    assert sum(r["evaluated"] for r in tiny.values()) == 212
    paper, sz = rows("paper")
    assert sz["params"] == 774_030_080  # gpt2-large: 3.1 GB of fp32 weights
    assert paper["DPO beta=0.1"]["steps"] == (25000 * 6 - 258) // 64  # one epoch of the pairs
    gpt2, sz = rows("gpt2")
    assert sz["params"] == 124_439_808


def test_checkpoint_bytes_are_those_save_pretrained_writes(tmp_path, compact_tok):
    import torch

    from model import GPT
    from ppo import ValueHead
    from reward import RewardModel

    _, gcfg, _ = budget.model_config(frontier.FrontierConfig(preset="tiny"))
    sz = budget.sizes(frontier.FrontierConfig(preset="tiny"))
    torch.manual_seed(0)
    gpt = GPT(gcfg)
    gpt.save_pretrained(str(tmp_path / "lm"))
    compact_tok.save(str(tmp_path / "lm"))
    assert folder_bytes(tmp_path / "lm") == sz["model"]
    ValueHead(gcfg.n_embd).save_pretrained(str(tmp_path / "lm"))
    assert folder_bytes(tmp_path / "lm") == sz["model"] + sz["head"]
    RewardModel(gpt, "label").save_pretrained(str(tmp_path / "rm"))
    compact_tok.save(str(tmp_path / "rm"))
    assert folder_bytes(tmp_path / "rm") == sz["model"] + sz["head"] + len('{"kind": "label"}')


# ----------------------------------------------------------------------------- pruning alone


def fake_run(root, name, steps, save_every=1, done=True):
    """A run folder with checkpoint folders (a config.json and some weights) and state.pt."""
    run = root / name
    for s in steps:
        (run / f"step_{s:06d}").mkdir(parents=True)
        (run / f"step_{s:06d}" / "config.json").write_text("{}")
        (run / f"step_{s:06d}" / "model.safetensors").write_bytes(b"0" * 100)
    (run / "run_config.json").write_text(json.dumps(dict(save_every=save_every)))
    (run / "state.pt").write_bytes(b"0")
    if done:
        (run / "done").write_text("")
    return str(run)


def rows_for(results, run, steps):
    with open(results, "a") as f:
        for s in steps:
            f.write(json.dumps(dict(checkpoint=f"{os.path.basename(run)}/step_{s:06d}")) + "\n")


def test_prune_deletes_only_evaluated_checkpoints_and_keeps_the_last(tmp_path):
    results = str(tmp_path / "frontier.jsonl")
    run = fake_run(tmp_path, "dpo", [1, 2, 3, 4])
    rows_for(results, run, [1, 2, 4])  # step 3 not evaluated yet (a kill, say)
    (tmp_path / "dpo" / "step_000002.pruned").mkdir()  # a removal a kill interrupted
    assert prune.prune(run, results) == 2
    assert [s for s, _ in list_checkpoints(run)] == [3, 4]
    assert sorted(os.listdir(run)) == ["done", "run_config.json", "step_000003", "step_000004"]
    assert prune.prune(run, results) == 0  # idempotent
    rows_for(results, run, [3])
    assert prune.prune(run, results) == 1
    assert [s for s, _ in list_checkpoints(run)] == [4]  # the last stays: loadable
    assert prune.prune(run, results, keep_last=False) == 1  # --no-keep_last
    assert list_checkpoints(run) == [] and os.path.exists(os.path.join(run, "done"))
    unfinished = fake_run(tmp_path, "ppo", [1, 2], done=False)
    rows_for(results, unfinished, [1, 2])
    assert prune.prune(unfinished, results) == 0  # resumes from them: untouched
    assert len(list_checkpoints(unfinished)) == 2 and os.path.exists(unfinished + "/state.pt")


def test_prune_all_steps_evaluated_or_not_keeps_the_last_if_asked(tmp_path):
    """all_steps: every step checkpoint goes, no results read; keep_last keeps the newest (a
    policy whose last checkpoint is read), keep_last=False none (the reward model: its best/)."""
    policy = fake_run(tmp_path, "ppo", [1, 2, 3])
    assert prune.prune(policy, "", keep_last=True, checkpoints=False, all_steps=True) == 2
    assert [s for s, _ in list_checkpoints(policy)] == [3]
    assert not os.path.exists(os.path.join(policy, "state.pt"))
    rm = fake_run(tmp_path, "rm", [1, 2])
    os.makedirs(os.path.join(rm, "best"))
    assert prune.prune(rm, "", keep_last=False, checkpoints=False, all_steps=True) == 2
    assert list_checkpoints(rm) == [] and os.path.isdir(os.path.join(rm, "best"))


def test_evaluating_every_kth_checkpoint_survives_pruning(tmp_path, monkeypatch):
    """With every=2, what is evaluated is what evaluate.checkpoints_of picks from the full
    listing, however much of the run a kill left pruned."""
    from evaluate import EvalConfig, checkpoints_of

    results = str(tmp_path / "frontier.jsonl")
    calls = []

    def fake_evaluate(c, shared=None):  # evaluate.main's bookkeeping, no models
        seen = prune.evaluated(c.out)
        todo = [p for _, p in checkpoints_of(c.runs[0], c.every)
                if prune.result_path(p, c.out) not in seen]
        calls.append(todo)
        rows_for(c.out, c.runs[0], [int(p[-6:]) for p in todo])

    monkeypatch.setattr(prune, "evaluate_main", fake_evaluate)
    ev = EvalConfig(out=results, every=2)
    full = fake_run(tmp_path, "full", [10, 20, 30, 40, 50], save_every=10)
    want = [s for s, _ in checkpoints_of(full, 2)]
    assert want == [20, 40, 50]
    run = fake_run(tmp_path, "dpo", [10, 20, 30, 40, 50], save_every=10)
    assert prune.evaluate_run(run, ev, thin=True) == 3
    prune.prune(run, results)
    # a kill mid-prune, replayed: step 40 deleted, 20 not yet, then the sweep restarted
    run2 = fake_run(tmp_path, "ul", [20, 50], save_every=10)
    rows_for(results, run2, [20])
    assert prune.evaluate_run(run2, ev, thin=True) == 1  # 50 only; 20 is not picked again
    rows = [r["checkpoint"] for r in read_jsonl(results)]
    assert len(rows) == len(set(rows))
    assert [s for s, _ in list_checkpoints(run)] == [50]
    assert prune.evaluate_run(run, ev, thin=True) == 0


# ----------------------------------------------------------------------------- a real sweep


@pytest.mark.slow  # ~30 s: in CI's slow run (python -m pytest -m slow)
def test_plan_matches_what_a_reduced_sweep_writes(pipeline, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(presets.PRESETS, "mini", mini_preset(pipeline.gt))
    out = str(tmp_path / "mini")
    cfg = frontier.FrontierConfig(preset="mini", out_dir=out, device="cpu", jobs=1)
    steps = frontier.plan(cfg)
    rows, sz = budget.budget(cfg, steps)
    live, real, loads, load = [], frontier.evaluate_live, [], evaluate.load_shared

    def spy(run, ev, shared):  # checkpoints of the training run before and after each evaluation
        before = len(list_checkpoints(run))
        real(run, ev, shared)
        live.append((before, len(list_checkpoints(run))))
    monkeypatch.setattr(frontier, "evaluate_live", spy)
    monkeypatch.setattr(evaluate, "load_shared", lambda c: loads.append(c) or load(c))
    frontier.main(cfg)
    results = read_jsonl(os.path.join(out, "frontier.jsonl"))
    # every checkpoint of a sweep run was evaluated while it trained, and a training run never
    # held more than the one it resumes from and the new one
    assert len(live) == sum(r["ckpts"] for r in rows if r["sweep"])
    assert all(b <= 2 and a == 1 for b, a in live), live
    # the reference, ground truth and prefixes loaded once per sweep run (+ best-of-N's step)
    assert len(live) > sum(r["sweep"] for r in rows) and len(loads) == sum(
        r["sweep"] for r in rows) + 1
    for (name, _, c), r in zip(steps, rows):
        folder = getattr(c, "out_dir", None)
        if not folder or r["kind"] == "pairs":
            continue
        assert not os.path.exists(os.path.join(folder, "state.pt")), name  # done: pruned
        ckpts = list_checkpoints(folder)
        if r["sweep"]:  # every checkpoint written was evaluated, the last one kept
            mine = [x for x in results if x["checkpoint"].split("/")[0] == os.path.basename(folder)]
            assert len(mine) == r["ckpts"] == r["evaluated"], name
            assert [s for s, _ in ckpts] == [r["steps"]], name
        elif r["best"]:  # the reward model: best/ is what is read, its steps are gone
            assert ckpts == [] and os.path.isdir(os.path.join(folder, "best")), name
        else:
            assert len(ckpts) == r["ckpts"], name
            assert ckpts[-1][0] == r["steps"], name
        for _, path in ckpts:
            assert folder_bytes(path) == pytest.approx(r["ckpt_bytes"], rel=0.01), path
    assert len(results) == sum(r["evaluated"] for r in rows) + 1 + 1  # + SFT, best-of-2
    assert len({x["checkpoint"] for x in results if "best_of" not in x}) == len(results) - 1
    _, _, end = budget.disk(rows)
    assert folder_bytes(out) == pytest.approx(end, rel=0.05)

    # started again: every step done, nothing evaluated or deleted again
    capsys.readouterr()
    frontier.main(cfg)
    printed = capsys.readouterr().out
    assert printed.count("done, skipped") == len(steps) - 2  # optimum, evaluate have no folder
    assert "evaluating" not in printed and "pruned" not in printed
    assert len(read_jsonl(os.path.join(out, "frontier.jsonl"))) == len(results)

    # evaluated as the runs train or after each run (--keep_checkpoints): the same numbers
    kept = dataclasses.replace(cfg, out_dir=str(tmp_path / "kept"), keep_checkpoints=True)
    frontier.main(kept)
    key = lambda rs: sorted((r["checkpoint"], r.get("best_of") or 0, r["reward"], r["kl"])
                            for r in rs)
    assert key(read_jsonl(os.path.join(kept.out_dir, "frontier.jsonl"))) == key(results)

    # --no-keep_last: the last checkpoints go too, their rows stay; the default after it copes
    for c in (dataclasses.replace(cfg, keep_last=False), cfg):
        frontier.main(c)
        assert read_jsonl(os.path.join(out, "frontier.jsonl")) == results
        for run in steps[-1][2].runs:
            assert list_checkpoints(run) == [] and os.path.exists(os.path.join(run, "done"))


@pytest.mark.slow  # ~40 s
def test_sweep_in_parallel_gives_the_rows_of_one_process(pipeline, tmp_path, monkeypatch,
                                                          capsys):
    """--jobs 2: the sweep runs train in two worker processes (one thread each), their rows meet
    in one frontier.jsonl. Exactly the rows of one process on one thread, none twice, the
    reference once, every run pruned to its last checkpoint, each step's output in logs/;
    started again, everything is skipped."""
    import torch

    monkeypatch.setitem(presets.PRESETS, "mini", mini_preset(pipeline.gt))
    one = frontier.FrontierConfig(preset="mini", out_dir=str(tmp_path / "one"), device="cpu",
                                  jobs=1)
    two = dataclasses.replace(one, out_dir=str(tmp_path / "two"), jobs=2)
    assert presets.n_jobs(one) == 1 and presets.n_jobs(two) == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in each worker: then the floats agree to the last bit
    try:
        frontier.main(one)
        frontier.main(two)
    finally:
        torch.set_num_threads(threads)
    a, b = (read_jsonl(os.path.join(c.out_dir, "frontier.jsonl")) for c in (one, two))
    key = lambda r: (r["checkpoint"], r.get("best_of"))
    assert len({key(r) for r in b}) == len(b) == len(a)  # nothing twice, nothing missing
    assert sum(r["method"] == "SFT" for r in b) == 1
    by_key = {key(r): r for r in a}
    for r in b:
        s = by_key[key(r)]
        assert (r["method"], r["param"], r["value"], r["step"]) == (s["method"], s["param"],
                                                                   s["value"], s["step"])
        assert (r["reward"], r["kl"], r["kl_k1"]) == (s["reward"], s["kl"], s["kl_k1"]), (r, s)
    steps = frontier.plan(two)
    for run in steps[-1][2].runs:
        assert len(list_checkpoints(run)) == 1, run
        assert os.path.getsize(os.path.join(two.out_dir, "logs",
                                            os.path.basename(run) + ".log")) > 0
    assert os.path.getsize(os.path.join(two.out_dir, "frontier.png")) > 10_000
    capsys.readouterr()
    frontier.main(two)
    assert read_jsonl(os.path.join(two.out_dir, "frontier.jsonl")) == b
    assert capsys.readouterr().out.count("done, skipped") == len(steps) - 2  # all but optimum,
    # evaluate (no folder)


def test_the_tiny_preset_runs_its_sweep_in_parallel_on_the_cpu(monkeypatch):
    monkeypatch.setattr(presets, "cpu_cores", lambda: 2)
    tiny = frontier.FrontierConfig(preset="tiny", device="cpu")
    assert presets.n_jobs(tiny) == 2
    assert presets.n_jobs(dataclasses.replace(tiny, jobs=1)) == 1
    assert presets.n_jobs(dataclasses.replace(tiny, preset="gpt2")) == 1  # one GPU
    assert presets.n_jobs(dataclasses.replace(tiny, device="cuda")) == 1
    monkeypatch.setattr(presets, "cpu_cores", lambda: 16)
    assert presets.n_jobs(tiny) == 4
    monkeypatch.setattr(presets, "fcntl", None)  # no file locks (Windows): one process
    assert presets.n_jobs(tiny) == 1


def test_losses_adds_every_variant_over_the_same_betas():
    """--losses: IPO, conservative DPO, SLiC-hinge and SimPO, each over the preset's four betas
    with DPO's own settings, per seed; off by default."""
    base = frontier.plan(frontier.FrontierConfig(preset="tiny"))
    more = frontier.plan(frontier.FrontierConfig(preset="tiny", losses=True, seeds=2))
    variants = [c for _, _, c in more if os.path.basename(c.out_dir if hasattr(c, "out_dir")
                                                            else "").split("_")[0] in
                frontier.VARIANTS]
    tiny = presets.PRESETS["tiny"]
    assert len(variants) == 2 * 4 * len(tiny.betas) and not any(
        os.path.basename(getattr(c, "out_dir", "")).startswith("simpo") for _, _, c in base)
    dpo_runs = {c.beta: c for _, _, c in base if os.path.basename(getattr(c, "out_dir", ""))
                .startswith("dpo_beta")}
    for c in variants:
        ref = dpo_runs[c.beta]
        for k in ("steps", "batch_size", "lr", "warmup", "patience", "eval_every", "save_every"):
            assert getattr(c, k) == getattr(ref, k), (c.out_dir, k)
    by_name = {os.path.basename(c.out_dir): c for c in variants}
    assert by_name["cdpo_beta0.1"].label_smoothing == 0.1 and by_name["cdpo_beta0.1"].loss == "dpo"
    assert by_name["simpo_beta5.0_seed1"].loss == "simpo" and by_name["ipo_beta1.0"].loss == "ipo"
    assert by_name["slic_beta0.05"].loss == "hinge"
    final = more[-1][2]
    assert set(by_name[n].out_dir for n in by_name) <= set(final.runs)  # all evaluated


def test_the_optimum_is_a_mixture_where_the_sweep_keeps_its_checkpoints():
    """tiny keeps each run's last checkpoint: its optimum samples the seed-0 PPO-GT runs beside
    the SFT model (the last one also at temperatures 0.7 and 0.5), after the sweep; with
    --no-keep_last (the GPU presets' default) it has only the SFT model's samples."""
    opt = lambda cfg: next(c for _, _, c in frontier.plan(cfg) if hasattr(c, "policies"))
    tiny = frontier.FrontierConfig(preset="tiny", out_dir="runs/t", seeds=2)
    kls = presets.PRESETS["tiny"].target_kls
    gt = tuple(f"runs/t/ppo_gt_kl{t}" for t in kls)
    assert opt(tiny).policies == gt + gt[-1:] * 2
    assert opt(tiny).temperatures == (1.0,) * len(kls) + (0.7, 0.5)
    assert opt(tiny).n_per_policy == 16 and opt(tiny).beta_min == 1e-5
    assert opt(dataclasses.replace(tiny, keep_last=False)).policies == ()
    assert opt(frontier.FrontierConfig(preset="gpt2")).policies == ()
    assert opt(dataclasses.replace(tiny, keep_last=False, keep_checkpoints=True)).policies


@pytest.mark.parametrize("keep_last", [True, False])
def test_the_mixture_optimum_runs_after_every_sweep_run(keep_last, monkeypatch, capsys):
    """frontier.main's order: the chain, then the sweep runs side by side (--jobs 2), then, where
    the optimum samples the sweep's checkpoints (tiny with its last checkpoints kept), the
    optimum, and the evaluation last; without kept checkpoints the optimum is one more
    independent step among the sweep's."""
    calls = []  # (where, step index, the step's name)
    monkeypatch.setattr(frontier, "run_step", lambda i, n, name, fn, c, final, cfg:
                        calls.append(("one", i, name)) or {})
    monkeypatch.setattr(frontier, "run_parallel", lambda steps, n, final, cfg, jobs:
                        calls.extend(("parallel", i, name) for i, name, _, _ in steps) or {})
    monkeypatch.setattr(frontier, "read_jsonl", lambda path: [])
    monkeypatch.setattr(frontier, "print_budget_table", lambda rows: None)
    cfg = frontier.FrontierConfig(preset="tiny", out_dir="runs/order", keep_last=keep_last,
                                  jobs=2)
    steps = frontier.plan(cfg)
    frontier.main(cfg)
    assert [i for _, i, _ in calls] == list(range(1, len(steps) + 1))  # each step once, in order
    names = [name for _, _, name in calls]
    where = {name: w for w, _, name in calls}
    final = steps[-1][2]
    sweep = [name for name, _, c in steps if getattr(c, "out_dir", None) in final.runs]
    assert names[-1] == steps[-1][0] and where[names[-1]] == "one"  # the evaluation, alone, last
    assert all(where[s] == "parallel" for s in sweep)
    assert where[steps[0][0]] == "one"  # the chain before the sweep
    optimum = next(name for name, _, c in steps if hasattr(c, "policies"))
    if keep_last:
        assert names.index(optimum) == len(names) - 2 and where[optimum] == "one"
    else:
        assert where[optimum] == "parallel"


def test_a_mixture_optimum_whose_policies_were_pruned(tmp_path, capsys):
    """An optimum step planned with policies whose checkpoints an earlier --no-keep_last deleted:
    its mixture rows are kept if the file has them (nothing runs), else it runs on the SFT
    model's samples alone (no policies, no temperatures)."""
    tiny = frontier.FrontierConfig(preset="tiny", out_dir=str(tmp_path))
    steps = frontier.plan(tiny)
    name, _, c = next(s for s in steps if hasattr(s[2], "policies"))
    assert c.policies and not any(map(list_checkpoints, c.policies))  # nothing trained here
    ran = []
    args = (1, 1, name, ran.append, c, steps[-1][2], tiny)
    frontier.run_step(*args)
    assert len(ran) == 1 and ran[0].policies == () and ran[0].temperatures == ()
    assert ran[0].M == c.M and ran[0].out == c.out
    with open(c.out, "w") as f:
        f.write(json.dumps(dict(estimator="mixture", kl=1.0, reward=0.9)) + "\n")
    ran.clear()
    frontier.run_step(*args)
    assert ran == [] and "its policies' checkpoints are gone" in capsys.readouterr().out


def test_the_gpu_memory_plan(capsys):
    """plan.gpu_memory reproduces the two steps measured on an H100 (docs/benchmarks.md:
    gpt2-large, micro-batch 16, SFT 128 tokens with AdamW 15.1 GB, DPO pairs of 56 tokens with
    RMSprop 11.8 GB) within 3 %; the GPU presets' plans show each step's memory and say whether a
    24 GB card holds the sweep, and with which flag; the CPU preset's shows none."""
    from dpo import DPOConfig
    from sft import SFTConfig

    sz = budget.sizes(frontier.FrontierConfig(preset="paper"))
    gt = budget.roberta_params()
    assert 355e6 < gt < 356e6  # RoBERTa-large
    sft = budget.gpu_memory("sft", SFTConfig(micro_batch=16, max_len=128), sz, gt, 32)
    dpo = budget.gpu_memory("dpo", DPOConfig(micro_batch=16), sz, gt, 32)
    assert sft[0] == pytest.approx(15.1e9, rel=0.03) and dpo[0] == pytest.approx(11.8e9, rel=0.03)
    assert sft[1] == 0 and dpo[1] > dpo[0]  # SFT is no sweep run; DPO's live evaluation adds
    frontier.main(frontier.FrontierConfig(preset="paper", plan=True))
    out = capsys.readouterr().out
    assert "GPU GB" in out and "over a 24 GB card by the live evaluation" in out
    assert "--keep_checkpoints evaluates each run after it instead" in out
    frontier.main(frontier.FrontierConfig(preset="paper", plan=True, keep_checkpoints=True))
    assert "fits a 24 GB card" in capsys.readouterr().out
    frontier.main(frontier.FrontierConfig(preset="gpt2", plan=True))
    assert "fits a 24 GB card" in capsys.readouterr().out
    frontier.main(frontier.FrontierConfig(preset="tiny", plan=True))
    assert "GPU" not in capsys.readouterr().out


def test_the_fixed_costs_in_the_gpu_plan(capsys):
    """The GPU presets' plan counts the fixed costs bench/eval_cost.py measured (model loads,
    checkpoint and state.pt writes, the test prefixes), scaled by bytes: here recomputed by hand
    for a DPO sweep run and a PPO run of the gpt2 preset; the tiny preset's stage times already
    hold them (measured wall times), so it adds none. The printed total includes them."""
    cfg = frontier.FrontierConfig(preset="gpt2")
    rows = {r["name"]: r for r in budget.budget(cfg, frontier.plan(cfg))[0]}
    sz, gt_bytes = budget.sizes(cfg), 4 * budget.roberta_params()
    per_byte = {k: t / b for k, (t, b) in budget.FIXED.items() if b}
    load, write = per_byte["load"], per_byte["write"]
    evaluation = lambda r: ((r["evaluated"] + 1) * sz["model"] * load  # + the reference
                            + gt_bytes * per_byte["load ground truth"]
                            + budget.FIXED["prefixes"][0])
    for name, models in (("DPO beta=0.05", 2), ("DPO beta=0.1", 1)):  # then the reference's
        dpo = rows[name]  # log-probs are cached: no reference to load
        assert dpo["ckpts"] == 8 and dpo["sweep"]
        train = models * sz["model"] * load + 8 * (dpo["ckpt_bytes"] + dpo["state_bytes"]) * write
        assert dpo["fixed"] == pytest.approx(train + evaluation(dpo))
    ppo_gt = rows["PPO-GT target KL=3.0"]  # policy, reference, the ground truth as the reward
    assert ppo_gt["fixed"] - rows["PPO target KL=3.0"]["fixed"] == pytest.approx(
        gt_bytes * per_byte["load ground truth"] - sz["model"] * load)
    assert rows["sft"]["fixed"] == pytest.approx(
        sz["model"] * load + (rows["sft"]["ckpt_bytes"] + rows["sft"]["state_bytes"]) * write)
    plan = frontier.main(frontier.FrontierConfig(preset="gpt2", plan=True))
    out = capsys.readouterr().out
    assert "+ fixed" in out and "fixed costs" in out and "not counted" in out
    total = sum(r["seconds"] + r["eval_seconds"] + r["fixed"] for r in plan["rows"])
    assert plan["seconds"] == pytest.approx(total)
    tiny = budget.budget(frontier.FrontierConfig(preset="tiny"),
                         frontier.plan(frontier.FrontierConfig(preset="tiny")))[0]
    assert all(r["fixed"] == 0 for r in tiny)
