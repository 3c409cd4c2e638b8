"""bench/dpo_vs_trl.py compares the same computation: on the same weights and batch, our DPO step
and TRL's DPOTrainer step give the same loss, rewards and gradient norm, and the same loss again
after one AdamW update; and its check fails when the two are set up differently (another beta,
another learning rate). A tiny GPT, a few pairs, fp32 on the CPU; timings are not tested."""

import math
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

# lr 1e-3: one AdamW update moves every weight by about 1e-3 (the weights' scale is 0.02), so the
# second step's loss is well away from the first's and must still agree between the two sides
TINY = ["--size", "tiny", "--vocab", "512", "--batch", "3", "--prompt_len", "2", "5",
        "--completion_len", "6", "12", "--lr", "1e-3", "--reps", "1", "--warmup", "1",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import dpo_vs_trl as bench

    from model import config_from_hf

    from plumbing.utils import read_hf_config

    args = bench.parse(TINY)
    policy, ref = bench.write_weights(args, str(tmp_path_factory.mktemp("weights")))
    rows = bench.make_pairs(args, config_from_hf(read_hf_config(policy)))
    return bench, args, policy, ref, rows


def test_same_loss_rewards_and_update_as_trl(setup, capsys):
    bench = setup[0]
    r = bench.main([*TINY, "--no_memory"])  # the whole script but its memory subprocesses
    out = capsys.readouterr().out
    assert "trl 1." in out and "time x TRL" in out and r["ratio"] > 0
    ours, trl = r["logs"]["ours"], r["logs"]["trl"]
    assert len(ours) == len(trl) == 2
    for k in ("loss/train", "rewards/chosen", "rewards/rejected"):
        assert ours[0][k] == pytest.approx(trl[0][k], abs=1e-6), k
    assert ours[0]["grad_norm"] == pytest.approx(trl[0]["grad_norm"], rel=1e-5)
    assert ours[1]["loss/train"] == pytest.approx(trl[1]["loss/train"], abs=1e-6)
    # margins: the reference is another model, so step 1 is not the trivial ln 2 with zero
    # rewards, and the update changed the loss
    assert abs(ours[0]["loss/train"] - math.log(2)) > 1e-3, ours[0]
    assert abs(ours[0]["rewards/chosen"]) > 1e-3 and abs(ours[0]["rewards/rejected"]) > 1e-3
    assert abs(ours[1]["loss/train"] - ours[0]["loss/train"]) > 1e-3, ours


@pytest.mark.parametrize("override", [{"beta": 0.2}, {"learning_rate": 2e-3}])
def test_check_fails_when_trl_is_set_up_differently(setup, override):
    """Another beta changes step 1 (loss, rewards, gradient); another learning rate leaves step 1
    alone and changes the loss after the update."""
    bench, args, policy, ref, rows = setup
    logs = bench.side_by_side(args, "cpu", policy, ref, rows, **override)["logs"]
    with pytest.raises(AssertionError, match="differ"):
        bench.compare(logs, fp32=True, beta=args.beta)
    if "learning_rate" in override:
        assert logs["ours"][0]["loss/train"] == pytest.approx(logs["trl"][0]["loss/train"],
                                                              abs=1e-6)


def test_memory_runs(setup):
    """Each side's memory run, with the flags main passes to its subprocess (run in this process
    here, to keep the test fast): the same pairs and settings, a peak measured."""
    bench, args, policy, _, rows = setup
    for side in ("ours", "trl"):
        child = bench.parse(bench.child_argv(args, "cpu", policy, side))
        for k in ("batch", "beta", "lr", "grad_clip", "seed"):
            assert getattr(child, k) == getattr(args, k), k
        for k in ("prompt_len", "completion_len"):
            assert list(getattr(child, k)) == list(getattr(args, k)), k
        m = bench.memory_child(child)
        assert m["peak_mb"] > 0, (side, m)
