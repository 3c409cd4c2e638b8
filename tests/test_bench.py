"""The benches run on a tiny config and the implementations they compare agree. Timings are not
tested (machines are noisy), beyond MFU being a fraction: the benches print them,
docs/benchmarks.md records them."""

import math
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
    # and it is a real next-token NLL: random GPT-2 weights (std 0.02) predict a near-uniform
    # distribution over the 512 tokens, ln 512 = 6.24 nats
    assert abs(r["loss_ours"] - math.log(512)) < 0.1, r["loss_ours"]


def test_sampling_same_tokens_as_transformers_generate():
    import sample

    # sample.main raises if ours (KV cache), transformers' greedy generate and ours without the
    # cache differ; the flag it returns says the same
    r = sample.main([*TINY, "--new", "16", "--linear"])
    assert r["identical"]


def test_dpo_step_concatenated_equals_naive(monkeypatch):
    """The bench builds its policy and reference with the same seed, so both ways give
    -log sigmoid(0) = ln 2 whatever they compute; with a reference of another seed the
    comparison has a margin to get right."""
    import common
    import dpo_step

    seeds = iter([0, 0, 1])  # the policy, its twin for the naive way, the reference
    monkeypatch.setattr(dpo_step, "model_pair",
                        lambda size, vocab: common.model_pair(size, vocab, seed=next(seeds)))
    r = dpo_step.main(TINY)
    assert abs(r["loss_concat"] - math.log(2)) > 1e-2, r  # policy != reference
    assert abs(r["loss_concat"] - r["loss_naive"]) < 1e-5


def test_mfu_reports_a_fraction():
    """mfu.main returns the matmul peak (FLOP/s), the FLOPs of one training step and each
    contender's seconds per step; MFU = flops_per_step / seconds / peak is a fraction in (0, 1].
    The peak is measured once, before the steps: on a busy machine it can come out low and the
    fraction above 1, so a fraction above 1 is measured again (twice at most). A wrong unit in
    the FLOP count or the peak (x 1e3, x 1e9) is above 1 every time."""
    import mfu

    # by hand: 6 N + 12 L T C FLOPs per token, N = two blocks of (64 x 192 + 192) + (64 x 64 +
    # 64) + (64 x 256 + 256) + (256 x 64 + 64) + 2 x 128 LayerNorm = 49,984, + ln_f's 128, + the
    # tied 512 x 64 output layer = 132,864; T = 128, C = 64; batch 4 x 128 tokens
    per_token = 6 * (2 * 49_984 + 128 + 512 * 64) + 12 * 2 * 128 * 64
    for _ in range(3):
        r = mfu.main([*TINY, "--matmul", "512"])
        assert r["flops_per_step"] == per_token * 4 * 128
        fractions = {k: r["flops_per_step"] / r[k] / r["peak"] for k in ("ours", "transformers")}
        assert all(f > 0 for f in fractions.values()), fractions
        if all(f <= 1 for f in fractions.values()):
            break
    assert all(0 < f <= 1 for f in fractions.values()), (fractions, r)


@pytest.mark.parametrize("preset", ["paper", "gpt2"])
def test_gpu_bench_runs_on_cpu_and_estimates(preset):
    import gpu

    r = gpu.main(["--size", "tiny", "--device", "cpu", "--reps", "1", "--roberta", "tiny",
                  "--micro_batch", "2", "--sft_batch", "2", "--seq", "16", "--gen_batch", "4",
                  "--new", "4", "--estimate", preset])
    est = r[f"{preset}_preset_estimate_h"]
    stages = {k: v for k, v in est.items() if k != "total"}
    assert set(stages) == {"sft", "pairs", "reward model", "dpo + unlikelihood", "preferred-ft",
                           "ppo + ppo-gt", "evaluation"}
    assert all(v >= 0 for v in stages.values()) and stages["sft"] > 0
    assert est["total"] == pytest.approx(sum(stages.values()), abs=0.011)
    # hours are work / throughput: every throughput twice as high, every stage takes half as long
    faster = {k: {m: 2 * x if m.endswith("_per_s") else x for m, x in v.items()}
              if isinstance(v, dict) else v for k, v in r.items()}
    half = gpu.estimate_hours(faster, preset)
    for k, v in stages.items():
        assert half[k] == pytest.approx(v / 2, abs=0.011), k
