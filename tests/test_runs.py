"""plumbing/runs.py (the life of a run folder: Run and its pieces, run_main), flags.py (config <->
flags) and utils.py's JSONL logs and atomic files. The Run tests drive a toy training loop written
against Run exactly as the scripts are, so every guarantee of the scripts is checked here once."""

import dataclasses
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from evaluate import EvalConfig

from plumbing import prune, runs, utils
from plumbing.flags import arg, config_to_argv, parse_config
from plumbing.runs import (
    check_finite,
    load_state,
    open_run,
    resume_log,
    run_main,
    save_checkpoint,
    start_run,
)
from plumbing.utils import append_jsonl, atomic_write, list_checkpoints, read_jsonl, write_jsonl

# ----------------------------------------------------------------------------- config <-> flags


@dataclasses.dataclass
class Cfg:
    steps: int = arg(100, "optimizer steps to run", "> 0")
    lr: float = arg(1e-6, "RMSprop learning rate", "> 0")
    name: str = arg("dpo run", "a label for the logs")
    sample: bool = arg(False, "sample completions while training")
    shuffle: bool = arg(True, "reshuffle every epoch")
    max_len: int | None = arg(None, "cut sequences to this many tokens", "> 0")
    betas: tuple[float, ...] = arg((0.05, 0.1, 1.0), "the beta sweep")
    out_dir: str = arg("runs/test", "where the run lives")
    overwrite: bool = arg(False, "start over in an existing out_dir")


@dataclasses.dataclass
class PercentCfg:
    warmup: float = arg(0.1, "warm-up as a fraction of steps (10% by default)", ">= 0")


CONFIGS = [
    Cfg(),
    Cfg(steps=3, lr=0.123456789012345, name="x", sample=True, shuffle=False, max_len=48,
        betas=(5.0,)),
    Cfg(steps=0, lr=1e-300, name="with  spaces and = signs", max_len=0, betas=(0.1, 1e-9, 2.5)),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_config_flags_round_trip(cfg):
    argv = config_to_argv(cfg)
    assert all(isinstance(a, str) for a in argv)
    back = parse_config(Cfg, argv)
    assert back == cfg
    assert isinstance(back.betas, tuple) and all(isinstance(b, float) for b in back.betas)


def test_parse_config_defaults_and_flags():
    assert parse_config(Cfg, []) == Cfg()
    cfg = parse_config(Cfg, ["--steps", "7", "--sample", "--no-shuffle", "--max_len", "32",
                             "--betas", "0.5", "2"])
    assert cfg == Cfg(steps=7, sample=True, shuffle=False, max_len=32, betas=(0.5, 2.0))
    assert parse_config(Cfg, ["--max_len", "None"]).max_len is None
    assert config_to_argv(Cfg(sample=True, shuffle=False))[6:10] == [
        "--sample", "--no-shuffle", "--max_len", "None"]


def test_parse_config_rejects_bad_values(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Cfg, ["--steps", "many"])
    assert e.value.code == 2
    assert "--steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--no_such_flag", "1"])


def test_help_shows_field_comments(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Cfg, ["--help"], description="Tiny test script.")
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "Tiny test script." in out
    for comment in ("optimizer steps to run", "RMSprop learning rate", "the beta sweep",
                    "cut sequences to this many tokens", "start over in an existing out_dir"):
        assert comment in out
    assert "--sample, --no-sample" in out and "--shuffle, --no-shuffle" in out


def test_help_with_percent_in_comment(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(PercentCfg, ["--help"])
    assert e.value.code == 0
    assert "(10% by default)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- run folders


def open_and_start(cfg):
    resuming = open_run(cfg)
    start_run(cfg)
    return resuming


def test_open_run_new_resume_refuse_overwrite(tmp_path):
    out = str(tmp_path / "run")
    cfg = Cfg(out_dir=out, steps=5)
    assert open_run(cfg) is False and not os.path.exists(out)  # checking writes nothing
    assert open_and_start(cfg) is False
    with open(os.path.join(out, "run_config.json")) as f:
        saved = json.load(f)
    assert saved["steps"] == 5 and saved["betas"] == [0.05, 0.1, 1.0]
    assert "overwrite" not in saved
    assert open_and_start(Cfg(out_dir=out, steps=5)) is True  # same config: resume
    with open(os.path.join(out, "log.jsonl"), "w") as f:
        f.write('{"step": 1}\n')
    with pytest.raises(ValueError, match=r"steps: 5 there, 6 now.*--overwrite"):
        open_run(Cfg(out_dir=out, steps=6))
    with pytest.raises(ValueError, match="betas"):
        open_run(Cfg(out_dir=out, steps=5, betas=(0.1,)))
    assert os.path.exists(os.path.join(out, "log.jsonl"))  # refusing touched nothing
    assert open_run(Cfg(out_dir=out, steps=6, overwrite=True)) is False
    assert os.path.exists(os.path.join(out, "log.jsonl"))  # --overwrite deletes at start_run
    start_run(Cfg(out_dir=out, steps=6, overwrite=True))
    assert os.listdir(out) == ["run_config.json"]  # the old run's files are gone
    with open(os.path.join(out, "run_config.json")) as f:
        assert json.load(f)["steps"] == 6
    assert open_and_start(Cfg(out_dir=out, steps=6)) is True


def test_open_run_accepts_a_field_added_since(tmp_path):
    # a run folder written before a field existed: the field at its default continues the run,
    # any other value is another config
    out = str(tmp_path / "run")
    start_run(Cfg(out_dir=out, steps=5))
    path = os.path.join(out, "run_config.json")
    with open(path) as f:
        saved = json.load(f)
    del saved["lr"]
    with open(path, "w") as f:
        json.dump(saved, f)
    assert open_run(Cfg(out_dir=out, steps=5)) is True
    with pytest.raises(ValueError, match=r"lr: None there, 0.001 now"):
        open_run(Cfg(out_dir=out, steps=5, lr=1e-3))


def test_start_run_clears_killed_writes(tmp_path):
    out = str(tmp_path / "run")
    cfg = Cfg(out_dir=out, steps=5)
    start_run(cfg)
    for name in ("state.pt.tmp123", "step_000002.tmp", "best.old", "step_000001.old"):
        os.makedirs(os.path.join(out, name)) if "step" in name or "best" in name else \
            open(os.path.join(out, name), "w").close()
    os.makedirs(os.path.join(out, "step_000001"))  # the new version of step 1 is in place
    start_run(cfg)
    assert sorted(os.listdir(out)) == ["best", "run_config.json", "step_000001"]  # best.old back


# ----------------------------------------------------------------------------- JSONL


def test_jsonl_torn_last_line(tmp_path):
    path = str(tmp_path / "log.jsonl")
    assert read_jsonl(path) == []
    rows = [{"step": i, "loss/train": 1.0 / (i + 1), "name": "é"} for i in range(3)]
    for r in rows:
        append_jsonl(path, r)
    assert read_jsonl(path) == rows
    with open(path, "a") as f:
        f.write('{"step": 3, "loss/tr')  # killed mid-write
    assert read_jsonl(path) == rows
    append_jsonl(path, {"step": 4})
    assert read_jsonl(path) == rows + [{"step": 4}]
    with open(path) as f:
        text = f.read()
    assert text.endswith("\n") and '"step": 3' not in text
    assert all(json.loads(line) for line in text.splitlines())  # only whole lines left


def test_jsonl_torn_only_line(tmp_path):
    path = str(tmp_path / "log.jsonl")
    with open(path, "w") as f:
        f.write('{"step"')
    assert read_jsonl(path) == []
    append_jsonl(path, {"step": 1})
    assert read_jsonl(path) == [{"step": 1}]
    with open(path) as f:
        assert f.read() == '{"step": 1}\n'


def test_jsonl_malformed_middle_line(tmp_path):
    path = str(tmp_path / "log.jsonl")
    with open(path, "w") as f:
        f.write('{"step": 1}\n\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"log\.jsonl:3: malformed"):
        read_jsonl(path)


def test_write_jsonl_replaces(tmp_path):
    path = str(tmp_path / "rows.jsonl")
    write_jsonl(path, [{"a": 1}, {"a": 2}])
    write_jsonl(path, [{"b": [1, 2]}])
    assert read_jsonl(path) == [{"b": [1, 2]}]
    assert os.listdir(tmp_path) == ["rows.jsonl"]


# ----------------------------------------------------------------------------- atomic files


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = str(tmp_path / "config.json")
    utils.atomic_write_json(path, {"v": 1})

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write('{"v": 2, ')  # half written, then the writer dies
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    with open(path) as f:
        assert json.load(f) == {"v": 1}
    assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left behind
    atomic_write(path, lambda tmp: open(tmp, "w").write('{"v": 3}'))
    with open(path) as f:
        assert json.load(f) == {"v": 3}
    assert os.listdir(tmp_path) == ["config.json"]


def write_ckpt(folder):
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2"}, f)
    torch.save({"w": torch.ones(2)}, os.path.join(folder, "weights.pt"))


def test_save_checkpoint_and_state(tmp_path):
    out = str(tmp_path)
    assert list_checkpoints(out) == [] and load_state(out) is None
    save_checkpoint(out, 200, write_ckpt, state={"opt": {"lr": 0.1}, "step": -1})
    save_checkpoint(out, 100, write_ckpt)
    os.makedirs(os.path.join(out, "step_000300"))  # no config.json: not a finished checkpoint
    os.makedirs(os.path.join(out, "step_000400.tmp"))
    assert list_checkpoints(out) == [(100, os.path.join(out, "step_000100")),
                                     (200, os.path.join(out, "step_000200"))]
    state = load_state(out)
    assert state["step"] == 200 and state["opt"] == {"lr": 0.1}
    with open(os.path.join(out, "step_000200", "config.json")) as f:
        assert json.load(f) == {"model_type": "gpt2"}
    # the same step again replaces it
    save_checkpoint(out, 200, lambda d: open(os.path.join(d, "config.json"), "w").write("{}"),
                    state={"x": 1})
    assert os.listdir(os.path.join(out, "step_000200")) == ["config.json"]
    assert load_state(out) == {"x": 1, "step": 200}
    assert not glob.glob(os.path.join(out, "state.pt.tmp*"))


def test_save_checkpoint_failure_leaves_nothing(tmp_path):
    out = str(tmp_path)
    save_checkpoint(out, 100, write_ckpt, state={"a": 1})

    def broken(folder):
        write_ckpt(folder)
        raise KeyboardInterrupt  # a kill mid-write

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(out, 200, broken, state={"a": 2})
    assert sorted(os.listdir(out)) == ["state.pt", "step_000100"]
    assert load_state(out) == {"a": 1, "step": 100}
    assert [s for s, _ in list_checkpoints(out)] == [100]


def test_resume_log_cuts_later_rows(tmp_path):
    out = str(tmp_path)
    for step in (0, 50, 100, 150, 200):
        runs.log_row(out, {"step": step, "loss/train": 1.0})
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write('{"step": 25')  # torn
    kept = resume_log(out, 100)
    assert [r["step"] for r in kept] == [0, 50, 100]
    assert read_jsonl(os.path.join(out, "log.jsonl")) == kept
    history = []
    runs.log_row(out, {"step": 150}, history)
    assert history == [{"step": 150}]
    assert [r["step"] for r in read_jsonl(os.path.join(out, "log.jsonl"))] == [0, 50, 100, 150]


def test_done_marker(tmp_path):
    assert not runs.is_done(str(tmp_path))
    runs.mark_done(str(tmp_path))
    assert runs.is_done(str(tmp_path)) and os.listdir(tmp_path) == ["done"]


def test_check_finite(tmp_path):
    check_finite(torch.tensor(0.5), 3, str(tmp_path))  # fine: no error
    with pytest.raises(FloatingPointError, match="step 7.*checkpoint: none"):
        check_finite(torch.tensor(float("nan")), 7, str(tmp_path))
    save_checkpoint(str(tmp_path), 5, write_ckpt)
    with pytest.raises(FloatingPointError, match=r"inf at step 12.*step_000005"):
        check_finite(torch.tensor(float("inf")), 12, str(tmp_path))
    save_checkpoint(str(tmp_path), 11, write_ckpt)  # its weights gave step 12's inf loss
    with pytest.raises(FloatingPointError, match=r"inf at step 12.*step_000005"):
        check_finite(torch.tensor(float("inf")), 12, str(tmp_path))


def test_rng_state_round_trip():
    runs.set_seed(3)
    state = runs.rng_state()
    a = (torch.rand(3), random.random())
    runs.set_rng_state(state)
    b = (torch.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


# ----------------------------------------------------------------------------- run_main


@dataclasses.dataclass
class MainCfg:
    n: int = arg(1, "how many")
    fail: bool = arg(False, "raise a ValueError")


def fake_main(cfg):
    if cfg.fail:
        raise ValueError(f"n must be small, got {cfg.n}")
    print(f"ran with n={cfg.n}")


def test_run_main_in_process(capsys, monkeypatch):
    monkeypatch.delenv("DPO_DEBUG", raising=False)
    run_main(fake_main, MainCfg, ["--n", "4"])
    assert capsys.readouterr().out == "ran with n=4\n"
    with pytest.raises(SystemExit) as e:
        run_main(fake_main, MainCfg, ["--n", "9", "--fail"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err == "error: n must be small, got 9\n"
    monkeypatch.setenv("DPO_DEBUG", "1")
    with pytest.raises(ValueError, match="got 9"):
        run_main(fake_main, MainCfg, ["--n", "9", "--fail"])


def test_run_main_subprocess(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent('''
        """A tiny script for the test."""
        import dataclasses
        from plumbing.flags import arg
        from plumbing.runs import run_main

        @dataclasses.dataclass
        class C:
            n: int = arg(1, "how many")

        def main(cfg):
            raise ValueError(f"bad n {cfg.n}")

        if __name__ == "__main__":
            run_main(main, C)
    '''))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    env.pop("DPO_DEBUG", None)
    r = subprocess.run([sys.executable, str(script), "--n", "3"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 1
    assert r.stderr == "error: bad n 3\n" and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0
    assert "A tiny script for the test." in r.stdout and "how many" in r.stdout


# ----------------------------------------------------------------------------- Run, end to end
# A toy training script written against Run as sft.py, dpo.py and ppo.py are: it draws from the
# global RNG (restored on resume), uses an optimizer with state (momentum), checkpoints every 5
# steps and sleeps a little per step so that a SIGKILL lands at a random point of it.

TOY = textwrap.dedent('''
    import dataclasses, json, os, sys, time
    import torch
    from plumbing.flags import arg
    from plumbing.runs import Run, run_main

    @dataclasses.dataclass
    class ToyConfig:
        out_dir: str = arg("runs/toy", "run folder")
        steps: int = arg(30, "optimizer steps", "> 0")
        lr: float = arg(0.05, "SGD learning rate")
        seed: int = arg(0, "data and noise", ">= 0")
        save_every: int = arg(5, "checkpoint every N steps", "> 0")
        sleep: float = arg(0.0, "seconds per step")
        overwrite: bool = arg(False, "start over")

    class Weights:
        def __init__(self, model):
            self.model = model
        def save_pretrained(self, folder):
            torch.save(self.model.state_dict(), os.path.join(folder, "w.pt"))
            with open(os.path.join(folder, "config.json"), "w") as f:
                json.dump({"toy": True}, f)

    def main(cfg):
        if cfg.lr <= 0:
            raise ValueError(f"lr must be positive, got {cfg.lr}")
        run = Run(cfg)
        if run.done:
            return run.history
        model = torch.nn.Linear(4, 1)
        if run.resume_from:
            model.load_state_dict(torch.load(os.path.join(run.resume_from, "w.pt")))
        if cfg.sleep < 0:
            raise ValueError("sleep must not be negative")  # found after Run(): no folder
        run.start()
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
        run.restore(opt)
        for step in run.steps(cfg.steps):
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
            y = x.sum(1, keepdim=True) + 0.1 * torch.randn(8, 1)  # global RNG
            loss = ((model(x) - y) ** 2).mean()
            run.check(loss)
            loss.backward()
            opt.step()
            opt.zero_grad()
            time.sleep(cfg.sleep)
            run.log({"loss/train": loss.item(), "tokens_per_s": run.tokens_per_s(32)})
            if run.due(cfg.save_every):
                run.save(opt, Weights(model))
        return run.finish()

    if __name__ == "__main__":
        run_main(main, ToyConfig)
''')


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy.py"
    path.write_text(TOY)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    env.pop("DPO_DEBUG", None)

    def start(*flags):
        return subprocess.Popen([sys.executable, str(path), *flags], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return start


def toy_result(out_dir):
    """(log rows without timing fields, final weights' bytes)."""
    rows = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in
            read_jsonl(os.path.join(out_dir, "log.jsonl"))]
    last = list_checkpoints(out_dir)[-1][1]
    with open(os.path.join(last, "w.pt"), "rb") as f:
        return rows, f.read()


def test_run_sigkill_resume_is_bit_identical(toy, tmp_path):
    """Killed with SIGKILL at random moments (mid-step, mid-checkpoint), the same command resumes
    and ends with the log and weights of a run that was never interrupted."""
    clean, killed = str(tmp_path / "clean"), str(tmp_path / "killed")
    assert toy("--out_dir", clean).wait(timeout=120) == 0
    log, rng, kills = os.path.join(killed, "log.jsonl"), random.Random(0), 0
    while True:
        logged = len(read_jsonl(log))
        proc = toy("--out_dir", killed, "--sleep", "0.03")
        # wait for this process's first new log row, then kill it a random moment later
        deadline = time.time() + 60
        while proc.poll() is None and len(read_jsonl(log)) <= logged and time.time() < deadline:
            time.sleep(0.01)
        if kills < 4 and proc.poll() is None:
            time.sleep(rng.random() * 0.3)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
        break
    assert kills >= 2, "the kills never landed; the run finished too fast"
    assert toy_result(killed) == toy_result(clean)
    assert runs.is_done(killed) and not glob.glob(os.path.join(killed, "*.tmp*"))


def test_run_refuses_another_config_and_bad_input_leaves_no_folder(toy, tmp_path):
    out = str(tmp_path / "run")
    p = toy("--out_dir", out, "--sleep", "-1")  # bad input found after Run(), before start()
    assert p.wait(timeout=60) == 1
    assert p.stderr.read().strip() == "error: sleep must not be negative"
    assert not os.path.exists(out)
    p = toy("--out_dir", out, "--steps", "0")  # a field out of its range (flags.check_fields)
    assert p.wait(timeout=60) == 1 and p.stderr.read().strip() == \
        "error: --steps must be positive, got 0"
    assert not os.path.exists(out)
    assert toy("--out_dir", out, "--steps", "6").wait(timeout=60) == 0
    before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}
    p = toy("--out_dir", out, "--steps", "7")
    assert p.wait(timeout=60) == 1
    assert "another config (steps: 6 there, 7 now)" in p.stderr.read()
    assert {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)} == before
    assert toy("--out_dir", out, "--steps", "7", "--overwrite").wait(timeout=60) == 0
    assert read_jsonl(os.path.join(out, "log.jsonl"))[-1]["step"] == 7


def test_run_in_process_resume_done_and_counters(tmp_path):
    """Run's own bookkeeping, in process: step numbers, due(), state.pt counters, done."""
    cfg = Cfg(out_dir=str(tmp_path / "r"), steps=4)
    run = runs.Run(cfg)
    assert not run.done and run.step == 0 and run.resume_from is None
    assert not os.path.exists(cfg.out_dir)  # Run() writes nothing
    run.start()
    assert run.restore() == {}
    seen = []
    for i in run.steps(4):
        seen.append((i, run.step, run.due(3)))
        run.log({"x": i})
        if run.step == 3:
            run.save(None, best=0.5)  # state.pt alone
            break
    assert seen == [(1, 1, False), (2, 2, False), (3, 3, True)]  # one numbering, from 1
    again = runs.Run(cfg)  # resumes from state.pt at step 3, the counters with it
    assert again.step == 3 and again.restore()["best"] == 0.5
    again.start()
    assert [r["step"] for r in again.history] == [1, 2, 3]
    assert [i for i in again.steps(4)] == [4]
    again.log({"x": 4})
    assert [r["step"] for r in again.finish()] == [1, 2, 3, 4]
    done = runs.Run(cfg)
    assert done.done and [r["x"] for r in done.history] == [1, 2, 3, 4]


def test_run_refuses_to_resume_without_its_checkpoint(tmp_path):
    """state.pt says step 2 but step_000002/ is gone (pruned, copied without it): an error naming
    the folder, never a silent restart from the initial weights with step 2's optimizer."""
    class Part:
        def save_pretrained(self, folder):
            with open(os.path.join(folder, "config.json"), "w") as f:
                f.write("{}")
    cfg = Cfg(out_dir=str(tmp_path / "r"), steps=4)
    run = runs.Run(cfg)
    run.start()
    for _ in run.steps(2):
        run.log({})
    run.save(None, Part())
    assert runs.Run(cfg).resume_from == os.path.join(cfg.out_dir, "step_000002")
    shutil.rmtree(os.path.join(cfg.out_dir, "step_000002"))
    with pytest.raises(FileNotFoundError, match="step_000002 is missing"):
        runs.Run(cfg)


def test_ctrl_c_says_where_it_stopped_and_the_same_command_resumes(toy, tmp_path):
    out = str(tmp_path / "run")
    argv = ("--out_dir", out, "--sleep", "0.05")
    proc = toy(*argv)
    log = os.path.join(out, "log.jsonl")
    deadline = time.time() + 60
    while len(read_jsonl(log)) < 7 and time.time() < deadline:  # past the checkpoint at step 5
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    err = proc.stderr.read()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    m = re.fullmatch(r"stopped after step (\d+); the same command resumes (\S+) from step (\d+)",
                     err.strip().splitlines()[-1])
    assert m, err
    saved = int(m.group(3))
    assert m.group(2) == out and saved % 5 == 0 and saved >= 5 and int(m.group(1)) >= saved
    assert int(m.group(1)) == read_jsonl(log)[-1]["step"]  # the last step it logged
    assert runs.load_state(out)["step"] == saved
    again = toy(*argv)
    assert again.wait(timeout=60) == 0
    assert f"resuming {out} from step {saved}" in again.stderr.read()
    done = toy(*argv)
    assert done.wait(timeout=60) == 0 and "is already done" in done.stderr.read()


def _stalling_loop(run, values, every=2, save_every=4, stop_at=None):
    """Log values[k] as "val" at steps 2, 4, ... (every `every`), save at run.due(save_every);
    stop_at: leave the loop (as a kill would) at that step, before its log. Returns the steps
    saved at."""
    saved = []
    for _ in run.steps(len(values) * every):
        if run.step == stop_at:
            return saved
        row = {"val": values[run.step // every - 1]} if run.due(every) else {}
        run.log(row)
        if run.due(save_every):
            run.save(None)
            saved.append(run.step)
    run.finish()
    return saved


@pytest.mark.parametrize("mode,values", [
    ("min", [5.0, 4.0, 3.0, 3.5, 3.0, 2.0, 1.0, 0.5]),  # best 3.0 at step 6; 3.5, 3.0 don't beat it
    ("max", [0.5, 0.6, 0.7, 0.65, 0.7, 0.8, 0.9, 1.0]),
])
def test_early_stopping_stops_saves_and_resumes_at_the_same_step(tmp_path, mode, values):
    cfg = Cfg(out_dir=str(tmp_path / "r"), steps=16)
    run = runs.Run(cfg)
    run.start()
    run.stop_when_stalled("val", patience=2, mode=mode)
    assert _stalling_loop(run, values) == [4, 8, 10]  # evaluations at 8 and 10 did not improve
    assert run.stalled and run.step == 10 and runs.is_done(cfg.out_dir)
    assert read_jsonl(os.path.join(cfg.out_dir, "log.jsonl"))[-1]["step"] == 10
    # the same run killed at step 9 (last save: step 8) resumes and stops at 10 again
    cfg2 = Cfg(out_dir=str(tmp_path / "k"), steps=16)
    run = runs.Run(cfg2)
    run.start()
    run.stop_when_stalled("val", patience=2, mode=mode)
    assert _stalling_loop(run, values, stop_at=9) == [4, 8]
    again = runs.Run(cfg2)
    assert again.step == 8
    again.start()
    again.stop_when_stalled("val", patience=2, mode=mode)
    assert not again.stalled  # one evaluation past the best so far (step 8)
    assert _stalling_loop(again, values) == [10]
    assert [r["step"] for r in read_jsonl(os.path.join(cfg2.out_dir, "log.jsonl"))] == \
        list(range(1, 11))
    # killed after the stopping step's checkpoint, before `done`: nothing more is trained
    cfg3 = Cfg(out_dir=str(tmp_path / "d"), steps=16)
    run = runs.Run(cfg3)
    run.start()
    run.stop_when_stalled("val", patience=2, mode=mode)
    _stalling_loop(run, values)
    os.remove(os.path.join(cfg3.out_dir, "done"))
    again = runs.Run(cfg3)
    again.start()
    again.stop_when_stalled("val", patience=2, mode=mode)
    assert again.stalled and list(again.steps(16)) == []


def test_early_stopping_off_and_bad_mode(tmp_path):
    cfg = Cfg(out_dir=str(tmp_path / "r"), steps=16)
    run = runs.Run(cfg)
    run.start()
    run.stop_when_stalled("val", patience=0)  # off: runs every step
    assert _stalling_loop(run, [5.0, 6.0, 7.0, 8.0, 9.0, 9.0, 9.0, 9.0]) == [4, 8, 12, 16]
    with pytest.raises(ValueError, match="mode must be min or max"):
        run.stop_when_stalled("val", 2, mode="up")


def test_live_evaluation_runs_after_each_checkpoint_and_leaves_the_rng_alone(tmp_path,
                                                                            monkeypatch):
    """prune.evaluate_live, the on_checkpoint that frontier.py passes to a sweep run's main, is
    called after each checkpoint's state.pt is written, and the training that follows draws the
    same random numbers as without it."""
    class Part:
        def save_pretrained(self, folder):
            with open(os.path.join(folder, "config.json"), "w") as f:
                f.write("{}")

    def loop(name, on_checkpoint=None):  # a training loop as sft/dpo/ppo write it
        run = runs.Run(Cfg(out_dir=str(tmp_path / name), steps=6))
        run.start()
        draws = []
        for step in run.steps(6):
            assert step == run.step  # one numbering: 1 .. 6
            draws.append(torch.rand(1).item())
            run.log({})
            if run.due(2):
                run.save(None, Part())
                if on_checkpoint:
                    on_checkpoint(run.dir)
        run.finish()
        return draws

    calls = []

    def evaluate_run(run_dir, ev, thin, shared):  # what an evaluation does to the global RNG
        calls.append(load_state(run_dir)["step"])
        torch.rand(100)
        random.random()

    monkeypatch.setattr(prune, "evaluate_run", evaluate_run)
    monkeypatch.setattr(prune, "remove_evaluated", lambda *a, **k: 0)
    ev = EvalConfig(out=str(tmp_path / "frontier.jsonl"))
    live = lambda folder: prune.evaluate_live(folder, ev)
    assert loop("live", live) == loop("plain")
    assert calls == [2, 4, 6]  # state.pt is already this step's
