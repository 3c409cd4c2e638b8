"""The benches run on a tiny config and the implementations they compare agree. Timings are not
tested (machines are noisy): the benches print them, the README records them."""

import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

TINY = ["--size", "tiny", "--vocab", "512", "--reps", "1"]


def test_train_step_same_loss_as_transformers():
    import train_step

    r = train_step.main(TINY)
    assert abs(r["loss_ours"] - r["loss_ref"]) < 1e-4  # same weights, same mean NLL
    assert r["ours"] > 0 and r["transformers"] > 0


def test_sampling_same_tokens_as_transformers_generate():
    import sample

    r = sample.main([*TINY, "--new", "16", "--linear"])
    assert r["identical"]  # ours (KV cache) = transformers' greedy generate = ours without cache


def test_dpo_step_concatenated_equals_naive():
    import dpo_step

    r = dpo_step.main(TINY)
    assert abs(r["loss_concat"] - r["loss_naive"]) < 1e-5


def test_mfu_reports_a_fraction():
    import mfu

    r = mfu.main([*TINY, "--matmul", "256"])
    assert r["peak"] > 0 and r["flops_per_step"] > 0


@pytest.mark.parametrize("preset", ["paper", "gpt2"])
def test_gpu_bench_runs_on_cpu_and_estimates(preset):
    import gpu

    r = gpu.main(["--size", "tiny", "--device", "cpu", "--reps", "1", "--roberta", "tiny",
                  "--micro_batch", "2", "--sft_batch", "2", "--seq", "16", "--gen_batch", "4",
                  "--new", "4", "--estimate", preset])
    est = r[f"{preset}_preset_estimate_h"]
    assert est["total"] > 0 and set(est) >= {"sft", "pairs", "dpo + unlikelihood", "evaluation"}
    assert r["dpo"]["pairs_per_s"] > 0 and r["sample"]["sequences_per_s"] > 0
