"""Installing and running as a new user does: what `pip install .` puts into site-packages, the
scripts beside other packages' modules of the same names, the offline errors for GPT-2's BPE
files and the hub, the command line's range checks, and frontier.py's local base model."""

import dataclasses
import os
import subprocess
import sys
import time
import zipfile

import pytest
from conftest import closed_port

import data

from plumbing import flags as cli
from plumbing import presets, utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_install_puts_no_top_level_module_into_site_packages(tmp_path):
    # The wheel that `pip install .` installs: only its metadata, none of model, data, utils,
    # evaluate, ... (a clash with Hugging Face's `evaluate` or a user's own utils.py).
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", ROOT, "-w", str(tmp_path)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert all(t.endswith(".dist-info") for t in top), f"the wheel installs {sorted(top)}"
    assert len(names) >= 3  # METADATA, WHEEL, RECORD: a real wheel was built


def test_scripts_use_their_own_modules_beside_clashing_ones(tmp_path):
    # A site-packages holding Hugging Face's `evaluate` and a stray `utils`, and a user's own
    # utils.py in the working directory: the scripts still import the clone's files.
    site = tmp_path / "site"
    (site / "evaluate").mkdir(parents=True)
    (site / "evaluate" / "__init__.py").write_text("raise ImportError('the wrong evaluate')\n")
    (site / "utils.py").write_text("raise ImportError('the wrong utils (site)')\n")
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "utils.py").write_text("raise ImportError('the wrong utils (cwd)')\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    for script in ("frontier.py", "dpo.py", "evaluate.py"):
        r = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], cwd=cwd,
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "usage" in r.stdout, (script, r.stderr[-1500:])


def test_missing_bpe_files_error_names_them(monkeypatch):
    import hashlib

    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(OSError) as e:
        data.gpt2_encoding()
    msg = str(e.value)
    for f, cached in data.GPT2_BPE_FILES.items():
        # tiktoken's cache names a file by the SHA-1 of its URL
        assert cached == hashlib.sha1((data.GPT2_BPE_URL + f).encode()).hexdigest()
        assert f in msg and cached in msg
    assert "TIKTOKEN_CACHE_DIR" in msg and data.GPT2_BPE_URL in msg


def test_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    assert not utils.hub_reachable()
    t0 = time.time()
    with pytest.raises(OSError, match="unreachable.*local folder"):
        utils.hub_download("gpt2", ("config.json",))
    with pytest.raises(OSError, match="unreachable.*local folder"):
        data.load_reviews("stanfordnlp/imdb", "train")
    assert time.time() - t0 < 10


def test_check_fields_names_the_flag(tmp_path):
    from dpo import DPOConfig
    from evaluate import EvalConfig
    from ppo import PPOConfig
    from sft import SFTConfig

    cases = [(PPOConfig(target_kl=-3), "--target_kl must be positive"),
             (SFTConfig(dropout=1.5), "--dropout must lie in"),
             (DPOConfig(lr=0), "--lr must be positive"),
             (DPOConfig(device="gpu"), "--device"),
             (PPOConfig(gamma=1.5), "--gamma"),
             (SFTConfig(warmup=-1), "--warmup must be non-negative"),
             (EvalConfig(best_of=(4, -1)), "--best_of must be non-negative"),
             (DPOConfig(beta="0.1"), "--beta must be a number, not '0.1'")]  # from a notebook
    for cfg, needle in cases:
        with pytest.raises(ValueError, match=needle):
            cli.check_fields(cfg, paths=False)
    with pytest.raises(ValueError, match="no_such.jsonl: no such file"):
        data.check_pairs(utils.read_jsonl(str(tmp_path / "no_such.jsonl")),
                         str(tmp_path / "no_such.jsonl"))
    with pytest.raises(FileNotFoundError, match="--runs .*typo"):
        cli.check_fields(EvalConfig(runs=(str(tmp_path / "typo"),)))
    cli.check_fields(PPOConfig(target_kl=None), paths=False)  # None: not set, fine
    cli.check_fields(SFTConfig(device="cuda:1"), paths=False)
    with pytest.raises(TypeError, match="unknown check '>0'"):  # a typo in a config class
        cli.arg(1, "a field", ">0")


def test_every_preset_is_in_range():
    import frontier

    for preset in presets.PRESETS:
        for _, _, c in frontier.plan(frontier.FrontierConfig(preset=preset)):
            cli.check_fields(c, paths=False)


def test_frontier_takes_a_local_base_model(tmp_path):
    import frontier

    folder = str(tmp_path / "my_gpt2")
    steps = frontier.plan(frontier.FrontierConfig(preset="gpt2", base_model=folder))
    (sft,) = [c for name, _, c in steps if name == "sft"]
    assert sft.init == folder
    # every later stage starts from the SFT run, never from the hub
    assert all(getattr(c, "init", sft.out_dir) in (folder, sft.out_dir) for _, _, c in steps)
    default = frontier.plan(frontier.FrontierConfig(preset="gpt2"))
    assert [c for name, _, c in default if name == "sft"][0].init == "gpt2"


def test_frontier_rejects_a_bad_preset_value_before_running(monkeypatch):
    import frontier

    calls = []
    bad = dataclasses.replace(presets.PRESETS["tiny"], target_kls=(3.0, -1.0))
    monkeypatch.setitem(presets.PRESETS, "bad", bad)
    monkeypatch.setattr(frontier, "sft_main", lambda c: calls.append(c))
    with pytest.raises(ValueError, match="--target_kl"):
        frontier.main(frontier.FrontierConfig(preset="bad"))
    assert calls == []


def test_score_warns_about_words_outside_a_compact_vocabulary():
    from reward import unknown_words

    tok = data.Tokenizer(data.synthetic_vocab())
    assert unknown_words(tok, "The acting was wonderful.") == []
    assert unknown_words(tok, "The acting was xylophonic.") == ["xylophonic."]
    assert unknown_words(data.Tokenizer(), "xylophonic") == []  # full GPT-2 BPE: nothing unknown
