"""What a student may skip: the run plumbing behind the lesson's loops.

runs.py (the run folder: refuse, resume, log, checkpoints, `done`; run_main, the `__main__` of
every script), flags.py (a config dataclass as command-line flags, each field's help and range),
utils.py (devices, atomic files, JSONL, checkpoint folders, the hub), speed.py (the CPU/GPU fast
paths, applied by one call: speed_up(model)), workers.py (sweep runs side by side), prune.py
(checkpoints evaluated, then deleted), presets.py (the frontier's presets) and plan.py
(`frontier.py --plan`).
"""
