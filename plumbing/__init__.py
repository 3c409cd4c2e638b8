"""What a student may skip: the run plumbing behind the lesson's loops.

runs.py (the run folder: refuse, resume, log, checkpoints, `done`), flags.py (a config dataclass as
command-line flags, field checks, the `__main__` of every script), utils.py (devices, atomic files,
JSONL, checkpoint folders, the hub), speed.py (the CPU/GPU fast paths, applied by one call),
workers.py (sweep runs side by side), prune.py (checkpoints evaluated, then deleted), presets.py
(the frontier's presets) and plan.py (`frontier.py --plan`).
"""
