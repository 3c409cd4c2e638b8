"""The three presets of frontier.py (tiny, gpt2, paper): every setting of every stage of the sweep,
each dict overriding the defaults of one script's config. frontier.py builds its steps from them;
plumbing/plan.py (`frontier.py --plan`) counts and sizes those steps without running them.
"""

from dataclasses import dataclass, field

from roberta import SIEBERT

from plumbing.utils import fcntl, get_device
from plumbing.workers import cpu_cores


@dataclass
class Preset:
    """Everything a sweep needs; each dict overrides the defaults of one script's config."""

    dataset: str
    ground_truth: str | None  # None: train the GPT-2 label classifier (gt) as ground truth
    sft: dict
    gt: dict
    pairs: dict
    rm: dict
    dpo: dict
    betas: tuple  # DPO sweep
    alphas: tuple  # Unlikelihood sweep
    pft: dict  # Preferred-FT: sft.py on the chosen completions
    pft_seeds: tuple
    ppo: dict
    target_kls: tuple  # PPO and PPO-GT sweeps
    eval: dict
    online: dict  # online/dpo.py's settings beyond DPO's (frontier.py --online)
    best_of: tuple = ()
    keep_last: bool = True  # keep each sweep run's last checkpoint (the default of --keep_last)
    parallel: bool = False  # on the CPU, train the sweep runs side by side (n_jobs)
    notes: list = field(default_factory=list)


# PPO's adaptive KL controller (ppo.update_kl_coef) moves its coefficient by at most a factor
# 1 +- 0.2 * batch / horizon per iteration. Each preset sets horizon = steps * batch / 8, so that
# within the run the coefficient can move about x5 either way (kl_coef_range) and the target-KL
# sweep gives distinct runs; a horizon of 10,000 samples over 40 iterations of 256 could move it
# only between x0.81 and x1.23.
# The SFT model's and the reward model's checkpoints serve only resume (the SFT model's last one
# and the RM's best/ are what later stages read), so the GPU presets save them rarely: a kill
# during those stages loses up to that many steps, the frontier loses no point.
PRESETS = {
    # CPU only, offline: the synthetic corpus, a 2-layer 64-wide GPT trained from scratch as the
    # base (compact vocabulary), the label classifier as ground truth. Its settings follow one rule
    # for every method (docs/results.md, "The rule"): the paper's four sweep values; one learning
    # rate, 1e-4, for everything that trains the policy, each with its own optimizer; each run
    # trains until its own validation signal has not improved for 2 evaluations (patience), capped
    # at about 3 passes over its data.
    "tiny": Preset(
        dataset="synthetic", ground_truth=None,
        sft=dict(init="scratch", steps=300, batch_size=32, micro_batch=32, lr=3e-3, warmup=20,
                 eval_every=100, save_every=100, n_layer=2, n_head=2, n_embd=64),
        gt=dict(epochs=1, batch_size=32, micro_batch=32, lr=1e-3, warmup=20,
                eval_every=100, save_every=200, eval_size=512),
        pairs=dict(n_prefixes=1024, chunk=128),
        rm=dict(epochs=3, batch_size=32, micro_batch=32, lr=1e-3, warmup=20, eval_every=50,
                patience=2, save_every=100, eval_size=256),
        # 550 steps of 32: 3 passes over the ~5,900 training pairs
        dpo=dict(steps=550, batch_size=32, micro_batch=32, lr=1e-4, warmup=10, eval_every=25,
                 patience=2, save_every=50, eval_size=256),
        betas=(0.05, 0.1, 1.0, 5.0), alphas=(0.05, 0.1, 0.5, 1.0),
        pft=dict(steps=550, batch_size=32, micro_batch=32, lr=1e-4, warmup=10, eval_every=25,
                 patience=2, save_every=50, eval_size=256),
        pft_seeds=(0, 1, 2, 3),
        # 100 iterations of 64 rollouts: 3 passes over the 2,000 prompts
        ppo=dict(steps=100, batch_size=64, gen_batch=64, mini_batch=32, micro_batch=32,
                 lr=1e-4, n_prompts=2000, eval_every=10, patience=2, save_every=10,
                 normalize_score=True, horizon=800, init_kl_coef=0.1),
        target_kls=(3.0, 6.0, 9.0, 12.0),
        eval=dict(n_prefixes=256, micro_batch=64),
        # online DPO: DPO's settings above; every 10 steps a pool of 64 prompts x 6 pairs (384
        # pairs for the 320 the 10 steps use), from PPO's 2,000 training prompts
        online=dict(refresh_every=10, pool_prompts=64, n_prompts=2000, gen_batch=256),
        best_of=(4, 16),
        parallel=True,
    ),
    # GPT-2 124M on IMDb with siebert, sized for one consumer GPU (docs/presets.md has the
    # estimate).
    "gpt2": Preset(
        dataset="stanfordnlp/imdb", ground_truth=SIEBERT,
        sft=dict(init="gpt2", steps=400, batch_size=64, micro_batch=16, lr=5e-5, warmup=40,
                 save_every=400),
        gt={},
        pairs=dict(n_prefixes=5000, chunk=64),
        rm=dict(epochs=1, batch_size=64, micro_batch=16, lr=1e-5, save_every=1000),
        dpo=dict(steps=400, micro_batch=16, save_every=50),
        betas=(0.05, 0.1, 1.0, 5.0), alphas=(0.05, 0.1, 0.5, 1.0),
        pft=dict(steps=400, micro_batch=16, lr=1e-5, save_every=50),
        pft_seeds=(0,),
        ppo=dict(steps=40, batch_size=256, gen_batch=128, mini_batch=64, micro_batch=16,
                 n_prompts=25000, save_every=5, normalize_score=True, horizon=1280),
        target_kls=(3.0, 6.0, 9.0, 12.0),
        eval=dict(n_prefixes=512, micro_batch=64),
        online=dict(refresh_every=10, pool_prompts=128, n_prompts=25000, gen_batch=128),
        best_of=(4, 16, 64),
        keep_last=False,  # 19 last checkpoints would be 9.5 GB: the rows are kept
    ),
    # The paper (§6.1, App. C.1): gpt2-large, siebert, 25k prefixes x 6 pairs, the full sweeps.
    "paper": Preset(
        dataset="stanfordnlp/imdb", ground_truth=SIEBERT,
        sft=dict(init="gpt2-large", steps=400, batch_size=64, micro_batch=8, lr=1e-5, warmup=40,
                 save_every=400),
        gt={},
        pairs=dict(n_prefixes=25000, chunk=64),
        rm=dict(epochs=3, batch_size=64, micro_batch=8, lr=1e-5, save_every=2500),
        dpo=dict(micro_batch=8, save_every=100),
        betas=(0.05, 0.1, 1.0, 5.0), alphas=(0.05, 0.1, 0.5, 1.0),
        pft=dict(steps=2000, micro_batch=8, lr=1e-6, warmup=150, save_every=100),
        pft_seeds=(0, 1, 2),
        ppo=dict(steps=100, batch_size=1024, gen_batch=128, mini_batch=256, micro_batch=8,
                 save_every=5, normalize_score=True, horizon=12800),
        target_kls=(3.0, 6.0, 9.0, 12.0),
        eval=dict(n_prefixes=512, micro_batch=32),
        # DPO there runs one epoch of the 150k pairs (2,340 steps of 64): online DPO as many
        online=dict(steps=2340, refresh_every=10, pool_prompts=128, n_prompts=25000,
                    gen_batch=128),
        best_of=(4, 16, 64, 128),
        keep_last=False,  # 19 last checkpoints would be 59 GB: the rows are kept
    ),
}


def kl_coef_range(ppo: dict) -> tuple[float, float]:
    """(lowest, highest) factor PPO's adaptive KL controller can apply to its coefficient within
    a run of these settings: every iteration at the clipped error of -0.2 or +0.2."""
    from ppo import PPOConfig

    c = PPOConfig(**ppo)
    step = 0.2 * c.batch_size / c.horizon
    return (1 - step) ** c.steps, (1 + step) ** c.steps


def keeps_last(cfg) -> bool:
    """Whether a finished sweep run keeps its last checkpoint: --keep_last, else the preset's."""
    return PRESETS[cfg.preset].keep_last if cfg.keep_last is None else cfg.keep_last


def n_jobs(cfg) -> int:
    """How many sweep runs train at once: --jobs, else the preset's rule (`parallel` presets on
    the CPU: one per core, at most 4; otherwise 1, the one GPU's; 1 where files cannot be locked,
    see utils.append_jsonl)."""
    if cfg.jobs:
        return cfg.jobs
    cpu = get_device(cfg.device) == "cpu"
    return min(4, cpu_cores()) if PRESETS[cfg.preset].parallel and cpu and fcntl else 1
