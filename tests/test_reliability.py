"""Reliability: SIGKILL at random moments and resume, atomic writes, bad input, determinism.

- Kills (slow): sft.py, dpo.py, ppo.py and pairs.py run as CLI subprocesses, are SIGKILLed at
  seeded random moments (right after the first log row, uniformly, and shortly after a checkpoint
  write began; save_every=1) and restarted on the same folder until done; the result must equal
  an uninterrupted run's (weights bit for bit, log line for line, pairs.jsonl byte for byte), at
  least one kill must have interrupted a write, and after every kill the folder must be
  consistent (every checkpoint loads, state.pt names a complete checkpoint, or for pairs.py a
  logged chunk, the log has no malformed line but a torn last one).
- Atomic writes: a writer that fails midway leaves the old file or folder, and no temporary; a
  kill while a folder is replaced leaves no half folder; a resumed run clears killed writes'
  temporaries.
- Bad input, through the CLI: one readable "error: ..." line, a non-zero exit, and nothing
  created or changed; NaN/inf losses and a full disk, in-process.
- Determinism: the same seed and config give the same log, timing fields aside (tokens_per_s,
  PPO's time/rollout and time/update: the only fields left out of the comparison).

Subprocesses and this module run torch on one thread: on a shared 2-core machine, two spinning
OpenMP threads make tiny models 10-50x slower, and it keeps the bit-for-bit comparisons between
processes on one code path.
"""

import errno
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import without_timing
from forkrun import run_all

from model import GPT

from plumbing import flags as cli
from plumbing import runs, utils
from plumbing.runs import run_main
from synthetic.reviews import synthetic_reviews

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TMP_PATTERNS = ("*.tmp", "*.tmp[0-9]*")  # write_folder's step_XXXXXX.tmp, atomic_write's x.tmp<pid>


def child_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("DPO_DEBUG", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- helpers


def log_lines(out_dir: str) -> list[dict]:
    """Every line of log.jsonl, parsed (a finished run has no torn line), timing fields dropped."""
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return without_timing([json.loads(line) for line in f.read().splitlines()])


def file_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def snapshot(folder: str) -> dict:
    """{relative path: sha256} of every file under folder ({} if it does not exist)."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, folder)] = hashlib.sha256(file_bytes(p)).hexdigest()
    return out


def tmp_leftovers(folder: str) -> list[str]:
    return sorted({os.path.basename(p) for pat in TMP_PATTERNS
                   for p in glob.glob(os.path.join(folder, "**", pat), recursive=True)})


def last_step_dir(out_dir: str) -> str:
    ckpts = utils.list_checkpoints(out_dir)
    assert ckpts, f"{out_dir} has no checkpoint"
    return ckpts[-1][1]


def write_reviews(folder: str, n_train: int, n_test: int, columns=("text", "label")):
    """Synthetic reviews as a local parquet folder in the hub's layout."""
    import pandas as pd

    os.makedirs(folder, exist_ok=True)
    for split, n, seed in (("train", n_train, 11), ("test", n_test, 12)):
        rv = synthetic_reviews(n, seed)
        pd.DataFrame({columns[0]: [t for t, _ in rv], columns[1]: [y for _, y in rv]}).to_parquet(
            os.path.join(folder, f"{split}-00000-of-00001.parquet"))
    return folder


# ----------------------------------------------------------------------------- tiny inputs


@pytest.fixture(scope="module")
def tiny(pipeline, tmp_path_factory):
    """The suite's tiny pipeline (conftest's `pipeline`: an SFT model from scratch on the
    synthetic corpus, a label classifier trained from it as the ground truth, a pairs file), the
    inputs of every later stage; with its pairs file copied into a folder of this module (the DPO
    runs here cache reference log-probs beside it, and a kill may leave a temporary there), and
    synthetic reviews as a local parquet folder (the hub's layout)."""
    root = str(tmp_path_factory.mktemp("tiny"))
    pairs_dir = os.path.join(root, "pairs")
    os.makedirs(pairs_dir)
    shutil.copy(pipeline.pairs, pairs_dir)
    reviews = write_reviews(os.path.join(root, "reviews"), 1024, 128)
    return SimpleNamespace(root=root, sft=pipeline.sft, ckpt=pipeline.sft_ckpt, gt=pipeline.gt,
                           pairs=os.path.join(pairs_dir, "pairs.jsonl"), reviews=reviews,
                           block_size=pipeline.sft_cfg.block_size)


# ============================================================================= kills (slow)


def check_folder_invariants(out_dir: str, heads=(), pairs_file: str | None = None):
    """What any kill must leave: every step_XXXXXX folder loads, state.pt (if any) loads and names
    a complete checkpoint (pairs.py, which keeps no step folders: a chunk whose log row is
    written), and the JSONL files have no malformed line except a torn last one."""
    import reward

    names = os.listdir(out_dir)
    for name in names:
        if re.fullmatch(r"step_\d{6}", name):
            folder = os.path.join(out_dir, name)
            try:
                GPT.from_pretrained(folder)
                for h in heads:
                    reward.load_head(os.path.join(folder, h))
            except Exception as e:
                raise AssertionError(f"checkpoint {name} left by a kill does not load: {e}") from e
    if "state.pt" in names:
        state = runs.load_state(out_dir)  # raises if torn
        if pairs_file:  # state.pt alone, written after the chunk's pairs and log row
            logged = {r["step"] for r in utils.read_jsonl(os.path.join(out_dir, "log.jsonl"))}
            assert state["step"] in logged, \
                f"state.pt is at chunk {state['step']} but the log has no row of it"
        else:
            folder = utils.step_dir(out_dir, state["step"])
            assert os.path.isfile(os.path.join(folder, "model.safetensors")), \
                f"state.pt is at step {state['step']} but {folder} is missing"
    utils.read_jsonl(os.path.join(out_dir, "log.jsonl"))  # raises on a malformed middle line
    if pairs_file:
        utils.read_jsonl(pairs_file)


def run_cli(argv, timeout=300, **env):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=child_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def run_to_completion(argv):
    r = run_cli(argv)
    assert r.returncode == 0, f"{' '.join(argv)} failed:\n{r.stderr[-3000:]}"


def _stat(path):
    try:
        st = os.stat(path)
        return st.st_ino, st.st_size, st.st_mtime_ns
    except FileNotFoundError:
        return None


def _wait(proc, ready, spin=False, timeout=120.0) -> bool:
    """Poll until ready() or the process ends; True if ready() while it still runs."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready():
            return True
        time.sleep(0 if spin else 0.0005)
    return False


def run_with_kills(argv, out_dir, seed, need_tmp, window, min_kills=3, max_kills=20,
                   heads=(), pairs_file=None):
    """Start `python argv` on out_dir, SIGKILL it, restart it with the same flags, until `done`.

    Each launch first waits until the process has written its log (start-up done: a first row,
    or the resumed log rewritten). The first kill then lands at once (right after the first row,
    before or during the first checkpoint); the following ones alternate between a seeded random
    delay in [0, window] s, and a seeded random delay of 0-5 ms after a checkpoint write began (a
    new step_XXXXXX.tmp or *.tmp<pid> appeared): for ppo.py a rollout takes ~10x longer than a
    save, so uniform kills alone rarely land in one. Kills go on until at least min_kills
    happened and, if need_tmp, one of them left evidence of an interrupted write (at most
    max_kills). Returns (delay, the temporaries this kill left) per kill."""
    rng = random.Random(seed)
    log = os.path.join(out_dir, "log.jsonl")
    kills = []
    err_path = out_dir + ".stderr"
    for _ in range(max_kills + 3):
        want = len(kills) < max_kills and (
            len(kills) < min_kills or (need_tmp and not any(t for _, t in kills)))
        before, old_tmp = _stat(log), set(tmp_leftovers(out_dir))
        with open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=child_env(),
                                    stdout=subprocess.DEVNULL, stderr=err)
        try:
            n = len(kills)
            started = lambda b=before: _stat(log) not in (b, None) and _stat(log)[1] > 0  # noqa: E731
            if want and _wait(proc, started, spin=n == 0):
                if n == 0:
                    delay = 0.0
                elif n % 2:
                    delay = rng.uniform(0, window)
                else:
                    writing = lambda o=old_tmp: bool(set(tmp_leftovers(out_dir)) - o)  # noqa: E731
                    _wait(proc, writing, spin=True, timeout=30)
                    delay = rng.uniform(0, 0.005)
                time.sleep(delay)
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    # what this kill interrupted (checked before a restart cleans anything up)
                    kills.append((delay, sorted(set(tmp_leftovers(out_dir)) - old_tmp)))
                    check_folder_invariants(out_dir, heads, pairs_file)
                    continue
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with open(err_path) as f:
            assert rc == 0, f"restarted run failed (exit {rc}):\n{f.read()[-3000:]}"
        if runs.is_done(out_dir):
            break
    assert runs.is_done(out_dir), "the run never finished"
    assert len(kills) >= min_kills, (
        f"the run finished after only {len(kills)} kills: lengthen it or shorten the window")
    if need_tmp:
        assert any(t for _, t in kills), (
            f"none of {len(kills)} kills caught a checkpoint write in progress (no step_*.tmp "
            f"folder or *.tmp<pid> file left at any kill; delays "
            f"{[round(d, 3) for d, _ in kills]})")
    return kills


def compare_with_uninterrupted(clean, killed, kills, files=(), heads=()):
    """The killed-and-resumed run must end as the uninterrupted one; every difference is listed:
    log lines (timing fields aside, no line twice), the final checkpoint's weights (and heads),
    and `files` byte for byte."""
    problems = []
    rows_clean, rows_killed = log_lines(clean), log_lines(killed)
    steps = [r["step"] for r in rows_killed]
    if steps != sorted(set(steps)):
        twice = sorted({s for s in steps if steps.count(s) > 1})
        problems.append(f"log.jsonl has lines of step(s) {twice} more than once")
    if rows_killed != rows_clean:
        first = next((i for i, (a, b) in enumerate(zip(rows_clean, rows_killed)) if a != b),
                     min(len(rows_clean), len(rows_killed)))
        dedup = [r for i, r in enumerate(rows_killed) if r not in rows_killed[:i]]
        problems.append(f"log.jsonl differs from the uninterrupted run's from line {first + 1} "
                        f"({len(rows_killed)} lines, not {len(rows_clean)}"
                        + ("; the same once the repeated lines are dropped)" if dedup == rows_clean
                           else ")"))
    if heads is not None and utils.list_checkpoints(clean):
        a, b = last_step_dir(clean), last_step_dir(killed)
        if os.path.basename(a) != os.path.basename(b):
            problems.append(f"last checkpoint {os.path.basename(b)}, not {os.path.basename(a)}")
        for name in ("model.safetensors", *heads):
            if file_bytes(os.path.join(a, name)) != file_bytes(os.path.join(b, name)):
                problems.append(f"final {name} differs from the uninterrupted run's")
    for name in files:
        if file_bytes(os.path.join(clean, name)) != file_bytes(os.path.join(killed, name)):
            problems.append(f"{name} differs from the uninterrupted run's")
    # (temporaries a kill leaves behind: test_resume_removes_temporaries_of_killed_writes)
    caught = [t for _, t in kills if t]
    assert not problems, (f"after {len(kills)} kills ({len(caught)} during a write, leaving "
                          f"{caught}):\n  " + "\n  ".join(problems))


def kill_test(script, args, tmp_path, seed, window, need_tmp=True, heads=(), files=()):
    clean, killed = str(tmp_path / "clean"), str(tmp_path / "killed")
    run_to_completion([script, *args, "--out_dir", clean])
    kills = run_with_kills([script, *args, "--out_dir", killed], killed, seed=seed,
                           need_tmp=need_tmp, window=window, heads=heads or (),
                           pairs_file=os.path.join(killed, "pairs.jsonl") if files else None)
    print(f"{script}: {len(kills)} kills, delays and what each interrupted: {kills}")
    compare_with_uninterrupted(clean, killed, kills, files, heads)


@pytest.mark.slow
def test_sft_survives_sigkill(tmp_path):
    kill_test("sft.py", [
        "--init", "scratch", "--dataset", "synthetic", "--steps", "400", "--batch_size", "4",
        "--micro_batch", "4", "--max_len", "32", "--lr", "1e-3", "--warmup", "5",
        "--eval_every", "20", "--eval_size", "16", "--save_every", "1", "--n_layer", "2",
        "--n_head", "2", "--n_embd", "64", "--block_size", "64", "--device", "cpu",
    ], tmp_path, seed=1, window=0.5)


@pytest.mark.slow
def test_dpo_survives_sigkill(tiny, tmp_path):
    kill_test("dpo.py", [
        "--init", tiny.sft, "--pairs", tiny.pairs, "--steps", "250", "--batch_size", "4",
        "--micro_batch", "4", "--lr", "1e-3", "--warmup", "5", "--eval_every", "20",
        "--eval_size", "16", "--save_every", "1", "--device", "cpu",
    ], tmp_path, seed=2, window=0.5)


@pytest.mark.slow
def test_ppo_survives_sigkill(tiny, tmp_path):
    kill_test("ppo.py", [
        "--init", tiny.sft, "--reward", "gt", "--ground_truth", tiny.gt, "--dataset",
        "synthetic", "--n_prompts", "64", "--steps", "100", "--batch_size", "4",
        "--gen_batch", "4", "--mini_batch", "4", "--micro_batch", "4", "--ppo_epochs", "1",
        "--lr", "1e-4", "--normalize_score", "--save_every", "1", "--device", "cpu",
    ], tmp_path, seed=3, window=0.5, heads=("value_head.safetensors",))


@pytest.mark.slow
def test_pairs_survives_sigkill(tiny, tmp_path):
    """pairs.py has no checkpoint: its unit of resumption is a chunk of prefixes."""
    kill_test("pairs.py", [
        "--init", tiny.sft, "--ground_truth", tiny.gt, "--dataset", "synthetic",
        "--n_prefixes", "1024", "--chunk", "8", "--device", "cpu",
    ], tmp_path, seed=4, window=0.3, need_tmp=False, heads=None, files=("pairs.jsonl",))


def test_resume_removes_temporaries_of_killed_writes(tmp_path, monkeypatch):
    """A SIGKILL inside atomic_write or write_folder leaves x.tmp<pid> / step_XXXXXX.tmp behind
    (no `finally` runs). The resumed run must not keep them forever: state.pt.tmp<pid> is as big
    as the optimizer state (GBs for gpt2-large), and each kill adds one under a new pid."""
    import sft

    out = str(tmp_path / "sft")
    cfg = sft_cfg(out, steps=4)
    monkeypatch.setattr(sft, "lm_loss", nan_on_call(sft.lm_loss, 3))  # stop at step 3 ...
    with pytest.raises(FloatingPointError):
        sft.main(cfg)
    monkeypatch.undo()
    # ... and leave what SIGKILLs in the middle of writes leave
    with open(os.path.join(out, "state.pt.tmp999991"), "wb") as f:
        f.write(file_bytes(os.path.join(out, "state.pt"))[:100])
    with open(os.path.join(out, "log.jsonl.tmp999992"), "w") as f:
        f.write('{"step": 1}\n{"st')
    os.makedirs(os.path.join(out, "step_000003.tmp"))
    with open(os.path.join(out, "run_config.json.tmp999993"), "w") as f:
        f.write("{")
    sft.main(cfg)
    assert runs.is_done(out)
    assert tmp_leftovers(out) == [], (
        f"the resumed, finished run still holds temporaries of killed writes: "
        f"{tmp_leftovers(out)}")


# ============================================================================= atomic writes
# (atomic_write's failure and append_jsonl after a torn line are covered in test_runs.py)


def partial_then_fail(n_bytes=7):
    """A writer for path-taking save functions: writes a few bytes, then the disk is full."""
    def write(*args, **kwargs):
        path = next(a for a in args if isinstance(a, (str, os.PathLike)))
        with open(path, "wb") as f:
            f.write(b"\x00partial"[:n_bytes])
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def test_write_folder_failure_keeps_old_folder(tmp_path):
    final = str(tmp_path / "step_000100")

    def good(folder):
        with open(os.path.join(folder, "a.bin"), "wb") as f:
            f.write(b"old version")

    def broken(folder):
        with open(os.path.join(folder, "a.bin"), "wb") as f:
            f.write(b"new, half")
        raise OSError(errno.ENOSPC, "No space left on device")

    utils.write_folder(final, good)
    before = snapshot(final)
    with pytest.raises(OSError, match="No space"):
        utils.write_folder(final, broken)
    assert snapshot(final) == before
    assert os.listdir(tmp_path) == ["step_000100"]


def test_write_folder_kill_while_replacing_leaves_a_whole_folder(tmp_path, monkeypatch):
    """write_folder replaces an existing folder (a resumed run re-saving a step, reward.py's
    best/). A kill before any one of its renames and deletions must not leave half a folder under
    the final name (absent is acceptable: list_checkpoints then does not see it)."""
    def version(tag):
        def write(folder):
            for name in ("config.json", "model.safetensors", "compact_vocab.json"):
                with open(os.path.join(folder, name), "w") as f:
                    f.write(f"{tag} {name}")
        return write

    utils.write_folder(str(tmp_path / "new"), version("new"))
    new = snapshot(str(tmp_path / "new"))
    ops = ("rename", "replace", "unlink", "remove", "rmdir")
    real = {op: getattr(os, op) for op in ops}
    for k in range(1, 100):  # kill before the k-th filesystem change, until none is left
        final = str(tmp_path / f"k{k}" / "step_000002")
        utils.write_folder(final, version("old"))
        old = snapshot(final)
        count = [0]

        def killing(op, k=k, count=count):
            def f(*args, **kwargs):
                count[0] += 1
                if count[0] == k:
                    raise KeyboardInterrupt  # stands for SIGKILL
                return real[op](*args, **kwargs)
            return f

        with monkeypatch.context() as m:
            for op in ops:
                m.setattr(os, op, killing(op))
            try:
                utils.write_folder(final, version("new"))
                finished = True
            except KeyboardInterrupt:
                finished = False
        if os.path.exists(final):
            assert snapshot(final) in (old, new), (
                f"a kill before filesystem change #{k} of write_folder left half a folder: "
                f"{sorted(os.listdir(final))}")
        if finished:
            assert snapshot(final) == new
            break


def test_atomic_torch_save_failure_keeps_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "state.pt")
    utils.atomic_torch_save({"step": 1, "w": torch.arange(3)}, path)
    monkeypatch.setattr(torch, "save", partial_then_fail())
    with pytest.raises(OSError, match="No space"):
        utils.atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    state = torch.load(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(3))
    assert os.listdir(tmp_path) == ["state.pt"]


def test_save_checkpoint_state_write_fails_midway(tmp_path, monkeypatch):
    """The step folder is complete, state.pt fails midway: state.pt stays at the old step (a step
    folder newer than state.pt is allowed, see runs.save_checkpoint), no temporary left."""
    out = str(tmp_path)

    def write(folder):
        with open(os.path.join(folder, "config.json"), "w") as f:
            f.write("{}")

    runs.save_checkpoint(out, 1, write, state={"opt": 1})
    monkeypatch.setattr(torch, "save", partial_then_fail())
    with pytest.raises(OSError, match="No space"):
        runs.save_checkpoint(out, 2, write, state={"opt": 2})
    monkeypatch.undo()
    assert runs.load_state(out) == {"opt": 1, "step": 1}
    assert sorted(os.listdir(out)) == ["state.pt", "step_000001", "step_000002"]


def test_dpo_reference_cache_written_atomically(tiny, tmp_path, monkeypatch):
    import dpo
    from data import load_tokenizer

    pairs = str(tmp_path / "pairs.jsonl")
    shutil.copy(tiny.pairs, pairs)
    rows = utils.read_jsonl(pairs)[:16]
    pad = load_tokenizer(tiny.ckpt).eos_id
    monkeypatch.setattr(torch, "save", partial_then_fail())
    with pytest.raises(OSError, match="No space"):
        dpo.reference_logps(tiny.ckpt, pairs, rows, pad, "cpu", 8)
    monkeypatch.undo()
    cache_dir = tmp_path / "ref_logps"
    assert not cache_dir.exists() or os.listdir(cache_dir) == [], \
        f"a failed cache write left {os.listdir(cache_dir)}"
    c, r = dpo.reference_logps(tiny.ckpt, pairs, rows, pad, "cpu", 8)
    files = os.listdir(cache_dir)
    assert len(files) == 1 and files[0].endswith(".pt")
    c2, r2 = torch.load(cache_dir / files[0])
    assert torch.equal(c, c2) and torch.equal(r, r2) and len(c) == 16


def test_frontier_plot_written_atomically(tmp_path, monkeypatch):
    import matplotlib.figure

    from report import figure

    jsonl = str(tmp_path / "frontier.jsonl")
    for method, kl, rew in (("SFT", 0.0, 0.5), ("DPO", 2.0, 0.8), ("PPO", 3.0, 0.7)):
        utils.append_jsonl(jsonl, dict(method=method, kl=kl, reward=rew))
    png = str(tmp_path / "frontier.png")

    def broken(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:  # no plot yet: none after a failed write
        m.setattr(matplotlib.figure.Figure, "savefig", broken)
        with pytest.raises(OSError, match="No space"):
            figure.plot_frontier(jsonl)
    assert sorted(os.listdir(tmp_path)) == ["frontier.jsonl"]
    assert figure.plot_frontier(jsonl) == png
    good = file_bytes(png)
    assert good.startswith(b"\x89PNG\r\n")
    with monkeypatch.context() as m:  # an old plot survives a failed rewrite
        m.setattr(matplotlib.figure.Figure, "savefig", broken)
        with pytest.raises(OSError, match="No space"):
            figure.plot_frontier(jsonl)
    assert file_bytes(png) == good
    assert sorted(os.listdir(tmp_path)) == ["frontier.jsonl", "frontier.png"]


# ============================================================================= bad input (CLI)


def argv_of(script, flags: dict) -> list[str]:
    return [script] + [a for k, v in flags.items() for a in (f"--{k}", str(v))]


def make_bad_inputs(tiny, root: str) -> dict:
    """Every bad-input case: name -> SimpleNamespace(argv, out_dir, needles: what the error line
    must name, diverges: the run starts and fails later, so its folder may exist)."""
    os.makedirs(root, exist_ok=True)
    p = lambda *a: os.path.join(root, *a)  # noqa: E731

    def ckpt_copy(name, edit):
        folder = p(name)
        shutil.copytree(tiny.ckpt, folder)
        edit(folder)
        return folder

    def to_llama(folder):
        path = os.path.join(folder, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
        with open(path, "w") as f:
            json.dump(cfg, f)

    def truncate(folder):
        path = os.path.join(folder, "model.safetensors")
        data = file_bytes(path)
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])

    no_config = ckpt_copy("no_config", lambda f: os.remove(os.path.join(f, "config.json")))
    llama = ckpt_copy("llama", to_llama)
    truncated = ckpt_copy("truncated", truncate)
    no_columns = write_reviews(p("no_columns"), 64, 16, columns=("review", "sentiment"))

    rows = utils.read_jsonl(tiny.pairs)

    def pairs_file(name, lines):
        with open(p(name), "w") as f:
            f.writelines(line + "\n" for line in lines)
        return p(name)

    empty = pairs_file("empty.jsonl", [])
    malformed = pairs_file("malformed.jsonl", [json.dumps(rows[0]), '{"prompt_ids": [1, 2], "ch',
                                               json.dumps(rows[1])])
    # line 8: 40 + block_size tokens, longer than the model's context (block_size)
    n = tiny.block_size
    too_long = pairs_file("too_long.jsonl", [json.dumps(
        dict(r, prompt_ids=[5] * 40, chosen_ids=[6] * n, rejected_ids=[7] * n) if i == 7 else r)
        for i, r in enumerate(rows[:20])])
    # line 3: token ids that are not integers
    not_ints = pairs_file("not_int_ids.jsonl", [json.dumps(
        dict(r, rejected_ids=[1.5, "x"]) if i == 2 else r) for i, r in enumerate(rows[:20])])
    # line 5: GPT-2 ids, for a model with the compact vocabulary (a pairs file of another model)
    foreign = pairs_file("foreign_ids.jsonl", [json.dumps(
        dict(r, chosen_ids=[40000, 30000, 50256]) if i == 4 else r)
        for i, r in enumerate(rows[:20])])

    sft = dict(init=tiny.sft, dataset="synthetic", steps=2, batch_size=4, micro_batch=4,
               device="cpu")
    dpo = dict(init=tiny.sft, pairs=tiny.pairs, steps=2, batch_size=4, micro_batch=4,
               device="cpu")
    ppo = dict(init=tiny.sft, reward="gt", ground_truth=tiny.gt, dataset="synthetic",
               n_prompts=16, steps=1, batch_size=4, gen_batch=4, mini_batch=4, micro_batch=4,
               device="cpu")
    rm = dict(objective="label", init=tiny.sft, dataset=tiny.reviews, epochs=1, batch_size=32,
              micro_batch=32, device="cpu")
    pairs = dict(init=tiny.sft, ground_truth=tiny.gt, dataset="synthetic", n_prefixes=8,
                 chunk=8, device="cpu")
    cases = {  # name: (script, flags, needles)
        "sft --init gpt3": ("sft.py", dict(sft, init="gpt3"), ["gpt3"]),
        "sft --init <no config.json>": ("sft.py", dict(sft, init=no_config), ["config.json"]),
        "dpo --init <llama config>": ("dpo.py", dict(dpo, init=llama), ["llama"]),
        "ppo --init <truncated safetensors>": ("ppo.py", dict(ppo, init=truncated),
                                               ["model.safetensors"]),
        "pairs --init <truncated safetensors>": ("pairs.py", dict(pairs, init=truncated),
                                                 ["model.safetensors"]),
        "sft --dataset <no text/label columns>": ("sft.py", dict(sft, dataset=no_columns),
                                                  ["text", "label"]),
        "dpo --pairs <empty file>": ("dpo.py", dict(dpo, pairs=empty), [empty, "no pairs"]),
        "dpo --pairs <malformed line 2>": ("dpo.py", dict(dpo, pairs=malformed),
                                           [f"{malformed}:2"]),
        "dpo --pairs <line 8 longer than the context window>": (
            "dpo.py", dict(dpo, pairs=too_long), [f"{too_long}:8", "context", str(n)]),
        "dpo --pairs <line 5 has ids outside the vocabulary>": (
            "dpo.py", dict(dpo, pairs=foreign), [f"{foreign}:5", "vocab"]),
        "dpo --pairs <line 3 ids are not integers>": (
            "dpo.py", dict(dpo, pairs=not_ints), [f"{not_ints}:3", "rejected_ids", "integer"]),
        "ppo --target_kl -3": ("ppo.py", dict(ppo, target_kl=-3), ["--target_kl", "positive"]),
        "sft --dropout 1.5": ("sft.py", dict(sft, dropout=1.5), ["--dropout"]),
        "pairs --device gpu": ("pairs.py", dict(pairs, device="gpu"), ["--device", "gpu"]),
        "evaluate --runs <no such folder>": (
            "evaluate.py", dict(ref=tiny.sft, ground_truth=tiny.gt, dataset="synthetic",
                                n_prefixes=4, runs=p("no_such_run")), ["--runs", "no_such_run"]),
        "dpo --ref <no such folder>": ("dpo.py", dict(dpo, ref=p("no_such_ref")),
                                       ["no_such_ref"]),
        "dpo --beta 0": ("dpo.py", dict(dpo, beta=0), ["beta"]),
        "dpo --beta -1": ("dpo.py", dict(dpo, beta=-1), ["beta"]),
        "dpo --lr 0": ("dpo.py", dict(dpo, lr=0), ["lr"]),
        "sft --lr 0": ("sft.py", dict(sft, lr=0), ["--lr", "positive"]),
        "ppo --lr 0": ("ppo.py", dict(ppo, lr=0), ["lr"]),
        "ppo --init_kl_coef -1": ("ppo.py", dict(ppo, init_kl_coef=-1), ["kl_coef"]),
        "reward.py train --lr 0": ("reward.py", dict(rm, lr=0), ["--lr", "positive"]),
        "sft --init gpt2 (hub offline)": ("sft.py", dict(sft, init="gpt2"),
                                          ["gpt2", "local folder"]),
        "sft --dataset stanfordnlp/imdb (hub offline)": (
            "sft.py", dict(sft, dataset="stanfordnlp/imdb"), ["stanfordnlp/imdb", "local folder"]),
        "sft --lr 1e30 (the loss becomes NaN)": (
            "sft.py", dict(sft, init="scratch", lr=1e30, warmup=1, steps=5, save_every=1,
                           max_len=32, n_embd=32), ["nan", "step 2", "checkpoint"]),
    }
    out = {}
    for i, (name, (script, flags, needles)) in enumerate(cases.items()):
        out_dir = p(f"out_{i}")
        out_flag = {"out": os.path.join(out_dir, "frontier.jsonl")} if script == "evaluate.py" \
            else {"out_dir": out_dir}  # evaluate.py writes a results file, not a run folder
        argv = argv_of(script, dict(flags, **out_flag))
        if script == "reward.py":
            argv.insert(1, "train")
        out[name] = SimpleNamespace(argv=argv, out_dir=out_dir, needles=needles,
                                    diverges="NaN" in name)
    inputs = [tiny.sft, tiny.gt, os.path.dirname(tiny.pairs), tiny.reviews, no_config, llama,
              truncated, no_columns, empty, malformed, too_long, foreign, not_ints]
    return out, inputs


@pytest.fixture(scope="module")
def bad_runs(tiny, tmp_path_factory):
    """All bad-input cases, two at a time."""
    root = str(tmp_path_factory.mktemp("bad"))
    cases, inputs = make_bad_inputs(tiny, root)
    hub = os.path.join(root, "empty_hf_home")  # nothing cached: the hub cases must go online
    os.makedirs(hub)
    before = {w: snapshot(w) if os.path.isdir(w) else file_bytes(w) for w in inputs}
    # each case a fork of one interpreter that has imported the scripts (forkrun.py): what these
    # cases cost is mostly Python's and torch's start-up
    done = run_all([c.argv for c in cases.values()], cwd=ROOT, env=child_env(HF_HOME=hub),
                   timeout=180)
    results = dict(zip(cases, done))
    changed = [w for w in inputs
               if (snapshot(w) if os.path.isdir(w) else file_bytes(w)) != before[w]]
    return SimpleNamespace(cases=cases, results=results, changed_inputs=changed)


BAD_CASES = [
    "sft --init gpt3", "sft --init <no config.json>", "dpo --init <llama config>",
    "ppo --init <truncated safetensors>", "pairs --init <truncated safetensors>",
    "sft --dataset <no text/label columns>", "dpo --pairs <empty file>",
    "dpo --pairs <malformed line 2>", "dpo --pairs <line 8 longer than the context window>",
    "dpo --ref <no such folder>", "dpo --pairs <line 3 ids are not integers>",
    "ppo --target_kl -3", "sft --dropout 1.5", "pairs --device gpu",
    "evaluate --runs <no such folder>",
    "dpo --pairs <line 5 has ids outside the vocabulary>", "dpo --beta 0", "dpo --beta -1",
    "dpo --lr 0", "sft --lr 0", "ppo --lr 0", "ppo --init_kl_coef -1", "reward.py train --lr 0",
    "sft --init gpt2 (hub offline)", "sft --dataset stanfordnlp/imdb (hub offline)",
    "sft --lr 1e30 (the loss becomes NaN)",
]


@pytest.mark.parametrize("name", BAD_CASES)
def test_bad_input_one_clear_error(bad_runs, name):
    case, r = bad_runs.cases[name], bad_runs.results[name]
    where, out_dir = f"`python {' '.join(case.argv)}`", case.out_dir
    assert r.returncode != 0, f"{where} exited 0"
    assert "Traceback" not in r.stderr, f"{where} printed a traceback:\n{r.stderr[-3000:]}"
    lines = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), \
        f"{where}: stderr does not end with an 'error: ...' line:\n{r.stderr[-2000:]!r}"
    msg = lines[-1]
    assert sum("error:" in ln for ln in lines) == 1 and len(msg) < 500, msg
    for needle in case.needles:
        assert needle.lower() in msg.lower(), \
            f"{where}: the message does not name {needle!r}: {msg}"
    assert r.returncode == 1
    if case.diverges:  # it ran: the checkpoint before the NaN stays, no `done`
        assert utils.list_checkpoints(out_dir) and not runs.is_done(out_dir)
    else:
        assert not os.path.exists(out_dir), (
            f"{where} failed but left {out_dir} behind, holding {sorted(os.listdir(out_dir))}: "
            f"a rerun with corrected flags meets a run_config.json of another config")


def test_bad_input_changes_no_input(bad_runs):
    assert bad_runs.changed_inputs == [], f"bad-input runs modified {bad_runs.changed_inputs}"


def test_bad_input_keeps_existing_run(tiny, tmp_path):
    """A bad flag on an existing, finished run folder: refused, and every file byte-identical."""
    out = str(tmp_path / "dpo")
    shutil.copytree(tiny.sft, out)  # stands for a finished run: run_config, log, step, done
    before = snapshot(out)
    r = run_cli(["dpo.py", "--init", tiny.sft, "--pairs", tiny.pairs, "--out_dir", out,
                 "--beta", "-1", "--device", "cpu"])
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith("error: ")
    assert "Traceback" not in r.stderr
    assert snapshot(out) == before


# ============================================================================= NaN / inf loss


def sft_cfg(out_dir, **kw):
    import sft

    return sft.SFTConfig(**dict(dict(
        out_dir=out_dir, init="scratch", dataset="synthetic", steps=6, batch_size=4,
        micro_batch=4, max_len=32, lr=1e-3, warmup=1, eval_every=100, eval_size=8, save_every=1,
        n_layer=2, n_head=2, n_embd=32, block_size=64, device="cpu"), **kw))


def nan_on_call(fn, n, value=float("nan")):
    """fn, except that its n-th call (1-based) returns a non-finite first output."""
    calls = [0]

    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        calls[0] += 1
        if calls[0] != n:
            return out
        if isinstance(out, tuple):
            return (out[0] * value,) + out[1:]
        return out * value
    return wrapped


def assert_stopped_cleanly(e, out_dir, bad_step):
    """The error names the step and a checkpoint saved before it, which loads with finite weights;
    nothing was saved or logged at or after the bad step (state.pt included), no `done`."""
    msg = str(e.value)
    assert f"step {bad_step}" in msg, msg
    m = re.search(r"checkpoint: (\S+)", msg)
    assert m, f"the message names no checkpoint: {msg}"
    named = m.group(1)
    ckpts = dict((p, s) for s, p in utils.list_checkpoints(out_dir))
    assert named in ckpts and ckpts[named] < bad_step, msg
    model = GPT.from_pretrained(named)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert max(ckpts.values()) < bad_step, "a checkpoint was saved at or after the bad step"
    state = runs.load_state(out_dir)
    assert state["step"] in ckpts.values() and state["step"] < bad_step
    assert max(r["step"] for r in utils.read_jsonl(os.path.join(out_dir, "log.jsonl"))) \
        < bad_step
    assert not runs.is_done(out_dir) and not tmp_leftovers(out_dir)


def test_sft_nan_loss_stops_at_last_good_checkpoint(tmp_path, monkeypatch):
    import sft

    out = str(tmp_path / "sft")
    monkeypatch.setattr(sft, "lm_loss", nan_on_call(sft.lm_loss, 3))
    with pytest.raises(FloatingPointError) as e:
        sft.main(sft_cfg(out))
    assert_stopped_cleanly(e, out, bad_step=3)


def test_dpo_inf_loss_stops_at_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    import dpo

    out = str(tmp_path / "dpo")
    monkeypatch.setattr(dpo, "preference_loss",
                        nan_on_call(dpo.preference_loss, 4, value=float("inf")))
    with pytest.raises(FloatingPointError, match="inf") as e:
        dpo.main(dpo.DPOConfig(out_dir=out, init=tiny.sft, pairs=tiny.pairs, steps=6,
                               batch_size=4, micro_batch=4, lr=1e-4, warmup=1, eval_size=0,
                               save_every=1, device="cpu"))
    assert_stopped_cleanly(e, out, bad_step=4)


def test_ppo_nan_loss_stops_at_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    import ppo

    out = str(tmp_path / "ppo")
    monkeypatch.setattr(ppo, "policy_loss", nan_on_call(ppo.policy_loss, 3))
    with pytest.raises(FloatingPointError) as e:  # one policy_loss call per step below
        ppo.main(ppo.PPOConfig(out_dir=out, init=tiny.sft, reward="gt", ground_truth=tiny.gt,
                               dataset="synthetic", n_prompts=16, steps=4, batch_size=4,
                               gen_batch=4, mini_batch=4, micro_batch=4, ppo_epochs=1,
                               lr=1e-4, save_every=1, device="cpu"))
    assert_stopped_cleanly(e, out, bad_step=3)


def test_diverging_lr_names_a_checkpoint_with_finite_loss(tmp_path):
    """A learning rate so large that the weights blow up (finite, but ~1e30): the checkpoint the
    error calls good must be one to restart from, i.e. its loss is finite; the weights saved right
    before the NaN step are the ones that produced it. ("none yet" is an honest answer too.)"""
    import sft
    from data import collate, load_reviews, load_tokenizer, sft_sequences

    out = str(tmp_path / "sft")
    with pytest.raises(FloatingPointError) as e:
        sft.main(sft_cfg(out, lr=1e30))
    assert "step 2" in str(e.value)
    named = re.search(r"checkpoint: (\S+)", str(e.value)).group(1)
    if not os.path.isdir(named):
        assert "none" in str(e.value)
        return
    model = GPT.from_pretrained(named)
    tok = load_tokenizer(named)
    seqs = sft_sequences(load_reviews("synthetic", "test")[0][:8], tok, 32)
    x, m = collate([[]] * len(seqs), seqs, tok.eos_id)
    with torch.no_grad():
        loss = sft.lm_loss(model, x, m)
    assert torch.isfinite(loss), (f"{e.value}: but the loss of {named} is {loss.item()}; the "
                                  f"weights saved right before the NaN step are not good")


# ============================================================================= full disk


def enospc_on_call(fn, n):
    """fn, except that its n-th call writes a few bytes and fails with a full disk."""
    calls = [0]
    fail = partial_then_fail()

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            return fail(*args, **kwargs)
        return fn(*args, **kwargs)
    return wrapped


@pytest.mark.parametrize("what", ["model.safetensors", "state.pt"])
def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch, what):
    import safetensors.torch

    import sft

    out = str(tmp_path / "sft")
    if what == "model.safetensors":
        monkeypatch.setattr(safetensors.torch, "save_file",
                            enospc_on_call(safetensors.torch.save_file, 3))
    else:
        monkeypatch.setattr(torch, "save", enospc_on_call(torch.save, 3))
    with pytest.raises(OSError) as e:
        sft.main(sft_cfg(out))
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert runs.load_state(out)["step"] == 2
    for _, folder in utils.list_checkpoints(out):
        GPT.from_pretrained(folder)
    steps = [s for s, _ in utils.list_checkpoints(out)]
    assert steps == ([1, 2] if what == "model.safetensors" else [1, 2, 3])
    assert not tmp_leftovers(out), tmp_leftovers(out)
    assert not runs.is_done(out)
    # space freed: the same command resumes and ends where an uninterrupted run ends
    sft.main(sft_cfg(out))
    clean = str(tmp_path / "clean")
    sft.main(sft_cfg(clean))
    assert log_lines(out) == log_lines(clean)
    assert file_bytes(os.path.join(last_step_dir(out), "model.safetensors")) == \
        file_bytes(os.path.join(last_step_dir(clean), "model.safetensors"))


def test_full_disk_via_run_main_one_error_line(tmp_path, monkeypatch, capsys):
    import safetensors.torch

    import sft

    monkeypatch.delenv("DPO_DEBUG", raising=False)
    monkeypatch.setattr(safetensors.torch, "save_file",
                        enospc_on_call(safetensors.torch.save_file, 2))
    out = str(tmp_path / "sft")
    argv = cli.config_to_argv(sft_cfg(out))
    with pytest.raises(SystemExit) as e:
        run_main(sft.main, sft.SFTConfig, argv)
    assert e.value.code == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "No space left on device" in lines[-1], err
    assert "Traceback" not in err
    assert runs.load_state(out)["step"] == 1 and not tmp_leftovers(out)


# ============================================================================= determinism


def run_twice(main, make_cfg, tmp_path, timing=("tokens_per_s",)):
    """Two runs of one config: the same log but for `timing`, the wall-clock fields the script
    logs (and nothing else is left out of the comparison), and the same final weights."""
    outs = [str(tmp_path / f"run{i}") for i in (1, 2)]
    for out in outs:
        main(make_cfg(out))
    a, b = (log_lines(o) for o in outs)
    assert len(a) > 1 and a == b, "two runs with the same seed and config logged differently"
    raw = utils.read_jsonl(os.path.join(outs[0], "log.jsonl"))
    assert {k for r in raw for k in r} - {k for r in a for k in r} == set(timing)
    fa, fb = (os.path.join(last_step_dir(o), "model.safetensors") for o in outs)
    assert file_bytes(fa) == file_bytes(fb)
    return outs


def test_sft_is_deterministic(tmp_path):
    import sft

    run_twice(sft.main, lambda out: sft_cfg(out, steps=8, save_every=4, eval_every=4,
                                            dropout=0.1), tmp_path)


def test_dpo_is_deterministic(tiny, tmp_path):
    import dpo

    run_twice(dpo.main, lambda out: dpo.DPOConfig(
        out_dir=out, init=tiny.sft, pairs=tiny.pairs, steps=6, batch_size=8, micro_batch=4,
        lr=1e-3, warmup=2, eval_size=16, eval_every=3, save_every=3, device="cpu"), tmp_path)


def test_ppo_is_deterministic(tiny, tmp_path):
    import ppo

    outs = run_twice(ppo.main, lambda out: ppo.PPOConfig(
        out_dir=out, init=tiny.sft, reward="gt", ground_truth=tiny.gt, dataset="synthetic",
        n_prompts=32, steps=3, batch_size=8, gen_batch=8, mini_batch=4, micro_batch=4,
        ppo_epochs=2, lr=1e-4, normalize_score=True, save_every=3, device="cpu"), tmp_path,
        timing=("tokens_per_s", "time/rollout", "time/update"))
    fa, fb = (os.path.join(last_step_dir(o), "value_head.safetensors") for o in outs)
    assert file_bytes(fa) == file_bytes(fb)
