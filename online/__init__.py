"""Online DPO: dpo.py's loss on pairs sampled from the current policy (beyond the lesson)."""
