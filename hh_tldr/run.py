"""The paper's other two experiments (§6.2) in one command: single-turn dialogue on Anthropic HH and
TL;DR summarization, each judged by its win rate against the test set's references.

    python -m hh_tldr.run --experiment hh --preset tiny    # CPU, offline: synthetic dialogues
    python -m hh_tldr.run --experiment tldr --preset tiny  # CPU, offline: synthetic posts
    python -m hh_tldr.run --experiment hh --preset gpt2 --judge openai:gpt-4-0314
    python -m hh_tldr.run --experiment tldr --preset gpt2  # judge: the learned RM (offline)
    python -m hh_tldr.run --experiment hh --preset gpt2 --rehearse  # every stage, 2 steps each

The steps, each a script's main(cfg) in this process, each skipped once done (a rerun resumes):
  1. the preference data as pairs files (preferences.py): train and test splits (and the
     tiny HH preset's validation split, TL;DR's held-out comparisons for the judge);
  2. SFT: HH on the chosen responses of the train pairs (the paper's HH SFT), TL;DR on the
     reference summaries of its SFT set (sft.py --completions);
  3. DPO from the SFT model (β = 0.1 for HH, 0.5 for TL;DR, the paper's); the tiny HH preset
     takes SFT, then DPO, at the checkpoint whose answers to validation prompts are right most
     often (select_checkpoint, <run>/best/);
  4. a Bradley-Terry reward model on the same train pairs: the offline judge (rm:), the picker of
     Best-of-N and PPO's reward;
  5. (every preset but tiny HH) PPO from the SFT model on the train pairs' prompts, and
     Preferred-FT: the SFT model fine-tuned on the pairs' chosen responses;
  6. win rates (winrate.py) of SFT, DPO, PPO, Preferred-FT and Best-of-N against the test
     references at each sampling temperature, with the judge's agreement with held-out pairs
     (and with the rule, on synthetic data): <out_dir>/winrate/winrate.jsonl and winrate.png.
With --seeds K, steps 2-6 again for seeds 1 .. K-1 (<out_dir>/sft_seed1, ...), then the win
rates' mean ± standard error over seeds: <out_dir>/winrate_seeds.jsonl and winrate_seeds.png. On
the synthetic dialogues, each winrate folder also gets correct.jsonl (the dataset's own rule).
--dataset (and TL;DR's --sft_dataset) reads local copies of the hub datasets, in their layout.
A finished run keeps what later steps read, as frontier.py: state.pt goes, and the reward model
keeps its best/ alone (plumbing/prune.py); --keep_checkpoints keeps everything, --plan prints
the checkpoints and the disk they take.
"""

import dataclasses
import json
import math
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass

from data import load_tokenizer
from dpo import DPOConfig
from dpo import main as dpo_main
from model import GPT
from ppo import PPOConfig
from ppo import main as ppo_main
from reward import RMConfig
from reward import train as rm_train
from sft import SFTConfig
from sft import main as sft_main

from hh_tldr import rehearse
from hh_tldr.preferences import PreferencesConfig
from hh_tldr.preferences import main as preferences_main
from hh_tldr.winrate import (
    WinRateConfig,
    accuracy_line,
    choose_prompts,
    load_rule,
    load_test,
    plot_winrate,
    sample_block,
    show,
)
from hh_tldr.winrate import check_config as check_judge
from hh_tldr.winrate import main as winrate_main
from plumbing.flags import arg, check_fields
from plumbing.prune import prune, saved_steps
from plumbing.rehearse import Measured, print_rehearsal
from plumbing.runs import config_dict, is_done, open_run, run_main, with_new_defaults
from plumbing.speed import speed_up
from plumbing.utils import (
    atomic_write_json,
    get_device,
    list_checkpoints,
    mean_stderr,
    read_jsonl,
    write_folder,
    write_jsonl,
)
from synthetic import COMPACT_VOCABS, compact_vocab
from synthetic.dialogues import SYNTHETIC_SIZES, dialogue_reward
from synthetic.summaries import SUMMARY_SIZES

# name: (data steps, sft, dpo, rm, winrate). Data: {split name: PreferencesConfig overrides}; the
# SFT step reads "sft_data" (pairs: the chosen responses; completions: prompt + reference).
# The GPU presets train the same stages the same way; only the data, β and the lengths differ.
GPT2_STAGES = dict(
    sft=dict(init="gpt2", steps=2000, batch_size=64, micro_batch=8, lr=5e-5, warmup=100,
             max_len=512, save_every=500, eval_every=500),
    # the RM checkpoints rarely (every 1000 of HH's ~2,500 steps: a GPT-2 checkpoint is 0.5 GB);
    # its best/ is what later steps read, and all its step checkpoints go once it is done
    rm=dict(epochs=1, batch_size=64, micro_batch=8, lr=1e-5, save_every=1000),
)
GPT2_DPO = dict(steps=2000, batch_size=64, micro_batch=8, save_every=500)
# PPO (our settings; the paper gives none for these experiments): 200 iterations of 64 rollouts as
# long as the win rates' responses, the KL controller's target 6 nats; Preferred-FT: SFT's recipe
# on the chosen responses of the train pairs, from the SFT model.
GPT2_PPO = dict(steps=200, batch_size=64, gen_batch=32, mini_batch=16, micro_batch=8,
                save_every=50)
GPT2_PFT = dict(steps=2000, batch_size=64, micro_batch=8, lr=5e-5, warmup=100, max_len=512,
                save_every=500, eval_every=500)

PRESETS = {
    # CPU, offline: synthetic single-turn dialogues in the HH layout (preferences.py: of two replies
    # drawn alike, the chosen one is the better by the rule), a 2-layer 64-wide GPT from scratch,
    # the learned RM as judge.
    ("hh", "tiny"): dict(
        data=dict(train=dict(dataset="synthetic", split="train", max_length=64,
                             max_prompt_length=40),
                  test=dict(dataset="synthetic", split="test", max_length=64,
                            max_prompt_length=40),
                  validation=dict(dataset="synthetic", split="validation", max_length=64,
                                  max_prompt_length=40)),
        sft_data="train",
        # SFT and DPO each run to a cap of 3 passes over the ~17,700 training pairs (1,650 steps of
        # 32), saving every 50 steps, and are taken at the checkpoint whose answers to 200
        # validation prompts are right most often, at T = 0 and 1 (select_checkpoint): their own
        # held-out losses are logged but stop nothing, since DPO's keeps improving while its answers
        # get worse (docs/hh_tldr.md). The judge RM trains 3 epochs and keeps its checkpoint of best
        # held-out accuracy (the paper's RM protocol). DPO warms up over App. B's 150 steps:
        # RMSprop's square average starts at 0, so its first steps are several times the lr.
        sft=dict(init="scratch", vocab="dialogue", steps=1650, batch_size=32, micro_batch=32,
                 lr=3e-3, warmup=20, eval_every=50, save_every=50, n_layer=2, n_head=2,
                 n_embd=64, block_size=64, eval_size=256),
        dpo=dict(beta=0.1, steps=1650, batch_size=32, micro_batch=32, lr=1e-4, warmup=150,
                 save_every=50, eval_every=50, eval_size=256),
        rm=dict(epochs=3, batch_size=32, micro_batch=32, lr=1e-3, warmup=20, eval_every=50,
                save_every=100, eval_size=256),
        select=dict(n=200, max_new_tokens=24, batch_size=50),
        winrate=dict(n=200, max_new_tokens=24, batch_size=50, best_of=4, rule="dialogue"),
    ),
    # CPU, offline: synthetic posts in the TL;DR layouts (synthetic/summaries.py: a post states
    # facts of stated importance; the rule scores a summary by the facts it covers, less padding;
    # the comparisons' labels are noisy draws from it), a 2-layer 64-wide GPT from scratch. The
    # settings were fixed before any test win rate was seen. SFT: the HH miniature's model, batch,
    # lr and warm-up, 1,200 steps (two passes over the references), lengths fitted to the posts;
    # DPO: the paper's TL;DR beta = 0.5, the HH miniature's lr, batch and warm-up, 600 steps (one
    # pass over the pairs); PPO: the IMDb tiny preset's lr, batches and KL-controller settings, 150
    # iterations on the whole prompt pool; Preferred-FT: the IMDb tiny preset's lr and batch, 600
    # steps as DPO; none stops early. The RM's lr (1e-4): the best of 1e-3, 3e-4 and 1e-4 by seed
    # 0's held-out accuracy on the train split (0.56 at 1e-3, docs/hh_tldr.md). Each
    # trained policy (SFT, DPO, PPO, Preferred-FT) is taken at its checkpoint of best mean rule
    # score on 200 validation prompts at T = 0 and 1 (select_checkpoint): one rule for all four;
    # the test prompts are never seen before the win rates. The judge RM keeps its checkpoint of
    # best held-out accuracy.
    ("tldr", "tiny"): dict(
        data={name: dict(dataset="synthetic_tldr", split=name, max_length=112,
                         max_prompt_length=88)
              for name in ("train", "test", "validation", "sft", "judge")},
        sft_data="sft",
        sft=dict(init="scratch", vocab="summary", steps=1200, batch_size=32, micro_batch=32,
                 lr=3e-3, warmup=20, eval_every=100, save_every=100, n_layer=2, n_head=2,
                 n_embd=64, block_size=128, eval_size=256),
        dpo=dict(beta=0.5, steps=600, batch_size=32, micro_batch=32, lr=1e-4, warmup=150,
                 save_every=50, eval_every=50, eval_size=256),
        rm=dict(epochs=2, batch_size=32, micro_batch=32, lr=1e-4, warmup=20, eval_every=50,
                save_every=100, eval_size=256),
        ppo=dict(steps=150, batch_size=64, gen_batch=64, mini_batch=32, micro_batch=32, lr=1e-4,
                 max_new_tokens=32, eval_every=10, save_every=10, normalize_score=True,
                 horizon=800, init_kl_coef=0.1),
        preferred_ft=dict(steps=600, batch_size=32, micro_batch=32, lr=1e-4, warmup=10,
                          eval_every=50, save_every=50, eval_size=256),
        select=dict(n=200, max_new_tokens=32, batch_size=50, rule="summary"),
        winrate=dict(n=200, max_new_tokens=32, batch_size=50, best_of=16, rule="summary"),
    ),
    # GPT-2 124M on Anthropic/hh-rlhf (the paper: Pythia-2.8B), one GPU. Best-of-16 (the paper's
    # HH baseline is Best-of-128: 8x the sampling).
    ("hh", "gpt2"): dict(
        data=dict(train=dict(dataset="Anthropic/hh-rlhf", split="train"),
                  test=dict(dataset="Anthropic/hh-rlhf", split="test")),
        sft_data="train", **GPT2_STAGES, dpo=dict(GPT2_DPO, beta=0.1),
        ppo=dict(GPT2_PPO, max_new_tokens=256), preferred_ft=GPT2_PFT,
        winrate=dict(n=256, max_new_tokens=256, batch_size=16, best_of=16),
    ),
    # GPT-2 124M on the TL;DR comparisons (the paper: GPT-J 6B), one GPU.
    ("tldr", "gpt2"): dict(
        data=dict(train=dict(dataset="CarperAI/openai_summarize_comparisons", split="train"),
                  test=dict(dataset="CarperAI/openai_summarize_tldr", split="test"),
                  sft=dict(dataset="CarperAI/openai_summarize_tldr", split="train"),
                  # held-out comparisons: the judge's agreement with their labels
                  judge=dict(dataset="CarperAI/openai_summarize_comparisons", split="test")),
        sft_data="sft", **GPT2_STAGES, dpo=dict(GPT2_DPO, beta=0.5),
        ppo=dict(GPT2_PPO, max_new_tokens=64), preferred_ft=GPT2_PFT,
        winrate=dict(n=256, max_new_tokens=64, batch_size=16, best_of=16),
    ),
}


@dataclass
class ExperimentConfig:
    experiment: str = arg("hh", "hh (dialogue, Anthropic HH) | tldr (summarization, TL;DR)")
    preset: str = arg("tiny", "tiny (hh only: CPU, offline) | gpt2 (one GPU)")
    out_dir: str | None = arg(None, "default runs/<experiment>_<preset>")
    base_model: str | None = arg(None,
                                 "override the preset's base model (e.g. a local GPT-2 folder)")
    dataset: str | None = arg(None, "override the preset's preference data: a local folder in "
                              "the hub layout (Anthropic/hh-rlhf; TL;DR's comparisons)")
    sft_dataset: str | None = arg(None, "tldr: override its SFT set (SFT on its train split, "
                                  "the win rates on its test split): a local folder")
    judge: str | None = arg(None,
                            "openai:<model> or rm:<folder> (default: the learned reward model)")
    device: str = arg("auto", "cuda > mps > cpu", "device")
    seeds: int = arg(
        1, "every run and the win rates repeated with seeds 0 .. K-1 (the data is one)", "> 0")
    keep_checkpoints: bool = arg(False, "keep every checkpoint and state.pt of every run")
    plan: bool = arg(False, "print each run's steps, checkpoints and the disk; run nothing")
    rehearse: bool = arg(False, "gpt2: every stage at its real shapes, cut to 2 steps, on a "
                         "random GPT-2 and synthetic data in the hub layouts "
                         "(hh_tldr/rehearse.py); default out_dir runs/<experiment>_gpt2_rehearsal")


# ----------------------------------------------------------------------------- checkpoint choice
# On the synthetic dialogues DPO's own held-out signal, the pair loss, keeps improving while its
# samples get worse (docs/hh_tldr.md shows it), so the tiny presets take each trained policy (SFT,
# DPO, and in TL;DR PPO and Preferred-FT) at the checkpoint whose samples score best by the
# dataset's rule on validation prompts: a third split of the grammar, never the test one. The
# checkpoint is copied to <run>/best/, which every later step loads for the run folder
# (utils.resolve_checkpoint), as the reward model's best/.


@dataclass
class SelectConfig:
    out_dir: str  # a finished run folder: its step_XXXXXX/ checkpoints are the candidates
    validation: str  # pairs JSONL of the validation split (its prompts; the rule judges)
    n: int = arg(200, "distinct validation prompts, a seeded choice")
    rule: str = arg("dialogue", "the dataset's rule that scores a response (winrate.RULES): "
                    "dialogue (1 if correct, else 0) | summary (synthetic/summaries.py)")
    temperatures: tuple[float, ...] = arg((0.0, 1.0),
                                          "the score: the rule's mean over these", ">= 0")
    max_new_tokens: int = arg(24, "", "> 0")
    batch_size: int = arg(50, "", "> 0")
    seed: int = arg(0, "which prompts, and the sampling", ">= 0")
    device: str = arg("auto", "", "device")


def select_checkpoint(cfg: SelectConfig) -> dict:
    """Score every checkpoint of cfg.out_dir by the rule's mean score of its responses to the
    validation prompts (dialogue: the share that state the correct answer), averaged over the
    temperatures; copy the best (the earliest of equals) to <out_dir>/best/ and write
    <out_dir>/selected.json (the config, every checkpoint's score, the choice), that file last."""
    _, rows = load_test(cfg.validation)
    rows = choose_prompts(rows, cfg.n, cfg.seed)
    rule = load_rule(cfg.rule, rows[0][1], rows[0][3], cfg.validation)
    device = get_device(cfg.device)
    scores = []
    for step, folder in list_checkpoints(cfg.out_dir):
        model, tok = speed_up(GPT.from_pretrained(folder)).to(device).eval(), load_tokenizer(folder)
        shares = {}
        for t_index, t in enumerate(cfg.temperatures):  # sampled as the win rates sample
            comps = sample_block(cfg, model, tok, [p for p, *_ in rows], t, t_index)
            right = [float(rule(r[1], tok.decode(c))) for r, c in zip(rows, comps)]
            shares[str(t)] = sum(right) / len(right)
        scores.append(dict(step=step, score=sum(shares.values()) / len(shares), correct=shares))
        print(f"  step {step}: {cfg.rule} rule " + ", ".join(f"T={t} {v:.3f}" for t, v in
                                                              shares.items()))
    if not scores:
        raise ValueError(f"{cfg.out_dir} holds no checkpoint to choose from")
    best = max(scores, key=lambda r: (r["score"], -r["step"]))
    source = os.path.join(cfg.out_dir, f"step_{best['step']:06d}")
    write_folder(os.path.join(cfg.out_dir, "best"), lambda f: [
        shutil.copy2(os.path.join(source, name), f) for name in os.listdir(source)])
    result = dict(config=config_dict(cfg), scores=scores, step=best["step"])
    atomic_write_json(os.path.join(cfg.out_dir, "selected.json"), result)
    print(f"  chose step {best['step']} (mean {cfg.rule} rule {best['score']:.3f}) -> "
          f"{os.path.join(cfg.out_dir, 'best')}")
    return result


def plan(cfg: ExperimentConfig):
    """The ordered steps: (name, main function, config)."""
    if (cfg.experiment, cfg.preset) not in PRESETS:
        raise ValueError(f"--experiment {cfg.experiment} --preset {cfg.preset} is not a preset; "
                         f"the presets: {', '.join(f'{e} {p}' for e, p in PRESETS)}")
    p = PRESETS[cfg.experiment, cfg.preset]
    out = cfg.out_dir or os.path.join("runs", f"{cfg.experiment}_{cfg.preset}"
                                      + "_rehearsal" * cfg.rehearse)
    if cfg.rehearse:  # the inputs the rehearsal writes (the counts: below)
        if p["sft"]["init"] == "scratch":
            raise ValueError(f"--rehearse is for the presets that start from a GPT-2 (gpt2), not "
                             f"{cfg.preset!r}, which trains from scratch on the CPU anyway")
        cfg = dataclasses.replace(cfg, seeds=1, **rehearse.inputs(out, cfg.experiment))
    run = lambda name: os.path.join(out, name)
    data = {name: os.path.join(out, "data", f"{name}.jsonl") for name in p["data"]}
    # with --base_model the data is tokenized by that model's tokenizer (not a compact one)
    tokenizer = {"tokenizer": cfg.base_model} if cfg.base_model else {}
    steps = [(f"data: {name}", preferences_main, PreferencesConfig(
        out=data[name], **{**kw, **tokenizer, **local_data(cfg, p, kw["dataset"])}))
             for name, kw in p["data"].items()]
    common = dict(device=cfg.device)
    source = ({"completions": data["sft"]} if p["sft_data"] == "sft"
              else {"pairs": data[p["sft_data"]]})
    sft_kw = dict(p["sft"], init=cfg.base_model or p["sft"]["init"])
    for seed in range(cfg.seeds):  # seed 0 in <out>/sft ..., seed k in <out>/sft_seed{k} ...
        tag, at = (f"_seed{seed}", f" seed={seed}") if seed else ("", "")
        sft, dpo, rm = run(f"sft{tag}"), run(f"dpo{tag}"), run(f"rm{tag}")
        ppo, pft = run(f"ppo{tag}"), run(f"preferred_ft{tag}")
        choose = {name: (f"choose {name} checkpoint{at}", select_checkpoint, SelectConfig(
            out_dir=folder, validation=data.get("validation", ""), seed=seed, **common,
            **p.get("select", {}))) for name, folder in (("SFT", sft), ("DPO", dpo),
                                                         ("PPO", ppo), ("Preferred-FT", pft))}
        steps.append((f"SFT{at}", sft_main, SFTConfig(out_dir=sft, seed=seed, **source,
                                                      **common, **sft_kw)))
        if "select" in p:  # SFT's checkpoint is chosen before DPO starts from it
            steps.append(choose["SFT"])
        steps.append((f"DPO beta={p['dpo']['beta']}{at}", dpo_main, DPOConfig(
            out_dir=dpo, init=sft, pairs=data["train"], seed=seed, **common, **p["dpo"])))
        if "select" in p:
            steps.append(choose["DPO"])
        steps.append((f"reward model{at}", rm_train, RMConfig(
            out_dir=rm, init=sft, objective="bt", pairs=data["train"], seed=seed, **common,
            **p["rm"])))
        policies = [f"SFT={sft}", f"DPO={dpo}"]
        if "ppo" in p:  # PPO on the train pairs' prompts, the reward model as its reward
            steps.append((f"PPO{at}", ppo_main, PPOConfig(
                out_dir=ppo, init=sft, reward="rm", rm=rm, prompts=data["train"], seed=seed,
                **common, **p["ppo"])))
            steps += [choose["PPO"]] if "select" in p else []
            policies.append(f"PPO={ppo}")
        if "preferred_ft" in p:  # SFT's model fine-tuned on the chosen responses of the pairs
            steps.append((f"Preferred-FT{at}", sft_main, SFTConfig(
                out_dir=pft, init=sft, pairs=data["train"], seed=seed, **common,
                **p["preferred_ft"])))
            steps += [choose["Preferred-FT"]] if "select" in p else []
            policies.append(f"Preferred-FT={pft}")
        judged = {"judge_pairs": data["judge"]} if "judge" in data else {}
        steps.append((f"win rates{at}", winrate_main, WinRateConfig(
            policies=tuple(policies), test=data["test"], judge=cfg.judge or f"rm:{rm}",
            best_of_rm=rm, out_dir=run(f"winrate{tag}"), seed=seed, **judged, **common,
            **p["winrate"])))
    if cfg.rehearse:  # each step cut to 2 steps, timed and its peak memory logged
        log = os.path.join(out, "rehearsal.jsonl")
        steps = [(name, Measured(fn, name, log), rehearse.cut(c)) for name, fn, c in steps]
    return steps


def local_data(cfg: ExperimentConfig, p: dict, dataset: str) -> dict:
    """A data step's --dataset or --sft_dataset: the preset's preference data (that of its train
    split) is --dataset, TL;DR's SFT set (its SFT and test splits) --sft_dataset."""
    if cfg.preset == "tiny" and (cfg.dataset or cfg.sft_dataset):
        raise ValueError("--dataset: the tiny preset trains on the synthetic dialogues or "
                         "posts (its vocabulary and its rule are theirs); local data takes "
                         "--preset gpt2")
    if cfg.sft_dataset and "sft" not in p["data"]:
        raise ValueError(f"--sft_dataset: {cfg.experiment}'s SFT is on the chosen responses of "
                         f"--dataset; only tldr has an SFT set")
    local = cfg.dataset if dataset == p["data"]["train"]["dataset"] else cfg.sft_dataset
    return {"dataset": local} if local else {}


def finished(c) -> bool:
    """Whether a step is done, for the config it has now: a data file or run folder made with
    another config (another preset in the same --out_dir, an edited preset) is an error, never
    silently reused. The win rates always run (winrate.py resumes on its own)."""
    if isinstance(c, WinRateConfig):
        return False
    if isinstance(c, SelectConfig):  # the choice, its config and the chosen copy
        path = os.path.join(c.out_dir, "selected.json")
        if not (os.path.isfile(path) and os.path.isdir(os.path.join(c.out_dir, "best"))):
            return False  # not chosen yet, or killed before selected.json: choose (again)
        with open(path) as f:
            if with_new_defaults(c, json.load(f)["config"]) != config_dict(c):
                raise ValueError(f"{path} was chosen with another config; delete it or choose "
                                 f"another --out_dir")
        return True
    if isinstance(c, PreferencesConfig):  # the data file, and the config that wrote it beside it
        sidecar = c.out + ".config.json"
        if not (os.path.isfile(c.out) and os.path.isfile(sidecar)):
            return False  # not written, or killed before its config: convert (again)
        with open(sidecar) as f:
            old, new = json.load(f), config_dict(c)
        if old != new:
            key = next(k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k))
            raise ValueError(f"{c.out} was written with another config ({sidecar}; {key}: "
                             f"{old.get(key)!r} there, {new.get(key)!r} now); delete it or "
                             f"choose another --out_dir")
        return True
    return open_run(c) and is_done(c.out_dir)  # open_run refuses another config


# ----------------------------------------------------------------------------- --plan
# The train rows of the presets' datasets (HH: its four train files; TL;DR: the comparisons' train
# split), for a plan made before the data step has written its file; a written file is counted.
TRAIN_ROWS = {"Anthropic/hh-rlhf": 160_800, "CarperAI/openai_summarize_comparisons": 92_534,
              "synthetic": SYNTHETIC_SIZES["train"], "synthetic_tldr": SUMMARY_SIZES["train"]}


def print_plan(cfg: ExperimentConfig, steps) -> dict:
    """--plan: each run's optimizer steps and checkpoints, and the peak disk of the experiment's
    runs as main prunes them (and with --keep_checkpoints): plumbing/plan.py's disk(), from the
    model's shapes on the meta device. Nothing is loaded or run; the data files are not counted."""
    import torch

    from model import GPTConfig, config_from_hf

    from plumbing.plan import GPT2_SIZES, STATE_EXTRA, disk, safetensors_bytes
    from plumbing.utils import read_hf_config

    p = PRESETS[cfg.experiment, cfg.preset]
    s = next(c for _, _, c in steps if isinstance(c, SFTConfig))
    if s.init in GPT2_SIZES:
        L, H, C = GPT2_SIZES[s.init]
        gcfg = GPTConfig(n_layer=L, n_head=H, n_embd=C)
    elif s.init != "scratch":
        gcfg = config_from_hf(read_hf_config(s.init))
    else:
        vocab = (len(compact_vocab(s.vocab)) + 1 if s.vocab in COMPACT_VOCABS
                 else GPTConfig.vocab_size)
        gcfg = GPTConfig(block_size=s.block_size, vocab_size=vocab, n_layer=s.n_layer,
                         n_head=s.n_head, n_embd=s.n_embd)
    with torch.device("meta"):
        model = GPT(gcfg)
    ckpt = safetensors_bytes({k: v.shape for k, v in model.state_dict().items()
                              if k != "lm_head.weight"}, {"format": "pt"})
    params = model.num_params(non_embedding=False)
    train = next(c for name, _, c in steps if name == "data: train")
    n = min(TRAIN_ROWS[p["data"]["train"]["dataset"]], train.n or math.inf)
    if os.path.isfile(train.out):
        with open(train.out) as f:
            n = sum(1 for _ in f)
    rows = []
    for name, _, c in steps:
        if not isinstance(c, (SFTConfig, DPOConfig, RMConfig, PPOConfig)):
            continue
        left = n - getattr(c, "eval_size", 0)  # the pairs left to train on, as each script counts
        if isinstance(c, (SFTConfig, PPOConfig)):
            total = c.steps
        elif isinstance(c, DPOConfig):
            total = c.steps or max(1, left // c.batch_size)
        else:
            total = max(1, c.epochs * left // c.batch_size)
        chosen = "select" in p and not isinstance(c, RMConfig)  # + best/, the chosen copy
        rmsprop = isinstance(c, DPOConfig) and c.optimizer == "rmsprop"
        # kept once done: the RM its best/, a policy all (tiny: they are chosen from) or its last
        kept = {} if "select" in p or isinstance(c, RMConfig) else {"kept": 1}
        rows.append(dict(name=name, steps=total, ckpts=len(saved_steps(total, c.save_every))
                         + chosen, best=isinstance(c, RMConfig), ckpt_bytes=ckpt, file_bytes=0,
                         state_bytes=STATE_EXTRA + (4 if rmsprop else 8) * params, sweep=False,
                         **kept))
    gb = lambda b: f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.1f} MB"
    source = train.out if os.path.isfile(train.out) else "the dataset's rows, before drops"
    print(f"{cfg.experiment} {cfg.preset}: {params / 1e6:.1f}M parameters, a checkpoint "
          f"{gb(ckpt)}; {n:,} train pairs ({source}). A plan: nothing is loaded or run.")
    for r in rows:
        kept = "best/ alone" if r["best"] else f"{r.get('kept', r['ckpts'])}"
        print(f"  {r['name']:<24}{r['steps']:>7} steps {r['ckpts'] + r['best']:>4} checkpoints "
              f"({kept} kept)")
    pruned, kept = disk(rows), disk(rows, keep_checkpoints=True)
    for (peak, at, end), what in ((pruned, "pruned (state.pt, the RM's step checkpoints)"),
                                  (kept, "--keep_checkpoints")):
        mark = "*" if (what == "--keep_checkpoints") == cfg.keep_checkpoints else " "
        print(f"{mark} disk {gb(peak)} at the peak ({at}), {gb(end)} at the end: {what}")
    return dict(rows=rows, pruned=pruned, keep_checkpoints=kept)


def correct_shares(winrate_dir: str) -> list[dict]:
    """The synthetic dialogues' own rule as a second measure: per policy and temperature, the share
    of the judged responses that state the correct answer (preferences.dialogue_reward), ± its
    standard error, from the win rates' comparisons.jsonl."""
    by = defaultdict(list)
    for c in read_jsonl(os.path.join(winrate_dir, "comparisons.jsonl")):
        by[c["policy"], c["temperature"]].append(dialogue_reward(c["prompt"], c["response"]))
    return [dict(policy=policy, temperature=t, correct=sum(v) / len(v), n=len(v),
                 stderr=math.sqrt(sum(v) / len(v) * (1 - sum(v) / len(v)) / len(v)))
            for (policy, t), v in by.items()]


def mean_over_seeds(per_seed: list[list[dict]], correct: list[list[dict]]) -> list[dict]:
    """One row per (policy, temperature): the win rate (and, when measured, the correct share, the
    rule's win rate and the judge's accuracy) as mean ± standard error over the seeds, each seed's
    value one sample."""
    # a seed with no judged comparison (all failures, win rate None) is left out
    stats = lambda xs: mean_stderr([x for x in xs if x is not None])
    shares = [{(c["policy"], c["temperature"]): c["correct"] for c in seed} for seed in correct]
    rows = []
    for k, r in enumerate(per_seed[0]):
        judges = list(dict.fromkeys(seed[k]["judge"] for seed in per_seed))
        judge = judges[0] if len(judges) == 1 else judges[0].split(":")[0] + ": each seed's own"
        row = dict(policy=r["policy"], temperature=r["temperature"], judge=judge,
                   task=r["task"], data=r.get("data"), expected=r["expected"],
                   seeds=len(per_seed))
        row["win_rate"], row["stderr"] = stats([seed[k]["win_rate"] for seed in per_seed])
        # the rule's win rate and the judge's accuracy (each seed's own judge): mean ± SE too;
        # the counts as their mean over seeds
        for key, se in (("rule_win_rate", "rule_stderr"),
                        ("judge_accuracy", "judge_accuracy_stderr"),
                        ("judge_accuracy_rule", "judge_accuracy_rule_stderr"),
                        ("labels_agree_rule", None)):
            if r.get(key) is not None:
                mean, err = stats([seed[k][key] for seed in per_seed])
                row.update({key: mean, **({se: err} if se else {})})
        for key in ("rule", "judge_accuracy_vs", "judge_pairs"):
            if key in r:
                row[key] = r[key]
        for key in ("judge_accuracy_n", "judge_accuracy_failures", "judge_accuracy_rule_n"):
            if key in r:
                row[key] = round(sum(seed[k][key] or 0 for seed in per_seed) / len(per_seed))
        if shares:
            key = (r["policy"], r["temperature"])
            row["correct"], row["correct_stderr"] = stats([s[key] for s in shares])
        rows.append(row)
    return rows


def main(cfg: ExperimentConfig):
    check_fields(cfg)
    steps = plan(cfg)
    for _, _, c in steps:  # every stage's settings, and the judge, before the first one starts
        check_fields(c, paths=False)
    check_judge(dataclasses.replace(steps[-1][2], judge_pairs=""))  # its file: the data step's
    if cfg.plan:
        return print_plan(cfg, steps)
    p = PRESETS[cfg.experiment, cfg.preset]
    synthetic = p["data"]["test"]["dataset"] == "synthetic"  # the dialogues: correct.jsonl
    out = os.path.dirname(steps[-1][2].out_dir)
    if cfg.rehearse:  # its random GPT-2 and synthetic data, written once; the RM's 2 steps of pairs
        rm = next(c for _, _, c in steps if isinstance(c, RMConfig))
        rehearse.write_inputs(out, cfg.experiment, p["sft"]["init"],
                              n_train=rm.eval_size + 2 * rm.batch_size)
    timings, per_seed, correct = {}, [], []
    for i, (name, fn, c) in enumerate(steps, 1):
        where = getattr(c, "out", None) or c.out_dir
        if finished(c):
            print(f"[{i}/{len(steps)}] {name}: done, skipped ({where})")
        else:
            print(f"[{i}/{len(steps)}] {name} -> {where}")
            t0 = time.time()
            results = fn(c)
            timings[name] = time.time() - t0
        trained = isinstance(c, (SFTConfig, DPOConfig, RMConfig, PPOConfig))
        if trained and not cfg.keep_checkpoints:
            # as frontier.py: a finished run's state.pt goes, and the RM's step checkpoints
            # (its best/ is what is read); the tiny presets' policies keep theirs (they are
            # chosen from), the gpt2 presets' their last (what the win rates read)
            rm = isinstance(c, RMConfig)
            prune(c.out_dir, "", keep_last=not rm, checkpoints=False,
                  all_steps=rm or "select" not in p)
        if isinstance(c, WinRateConfig):
            per_seed.append(results)
            if synthetic:  # the dataset's rule: how often each policy is right
                correct.append(correct_shares(c.out_dir))
                write_jsonl(os.path.join(c.out_dir, "correct.jsonl"), correct[-1])
                plot_winrate(os.path.join(c.out_dir, "winrate.jsonl"))  # now with it
                for r in correct[-1]:
                    print(f"{r['policy']:>16}  T={r['temperature']:<5}  correct "
                          f"{r['correct']:.3f} ± {r['stderr']:.3f}  (the dataset's rule)")
    for name, t in timings.items():
        print(f"  {name}: {t:.0f} s")
    if cfg.rehearse:
        print_rehearsal(os.path.join(out, "rehearsal.jsonl"))
    if cfg.seeds == 1:
        return per_seed[0]
    rows = mean_over_seeds(per_seed, correct)
    path = os.path.join(out, "winrate_seeds.jsonl")
    write_jsonl(path, rows)
    print(f"{cfg.seeds} seeds: mean ± standard error over seeds -> {path}, "
          f"{plot_winrate(path)}")
    for r in rows:
        share = f", correct {show(r['correct'], r['correct_stderr'])}" if correct else ""
        if r.get("rule_win_rate") is not None:
            share += f", by the rule {show(r['rule_win_rate'], r['rule_stderr'])}"
        print(f"{r['policy']:>16}  T={r['temperature']:<5}  win rate "
              f"{show(r['win_rate'], r['stderr'])}{share}")
    if accuracy_line(rows[0]):
        print(accuracy_line(rows[0]) + f" (mean ± SE over {cfg.seeds} seeds)")
    return rows


if __name__ == "__main__":
    run_main(main, ExperimentConfig)
