"""The paper's other two experiments, Anthropic HH dialogue and TL;DR summarization, judged by win
rate: preference datasets (preferences.py), win rates (winrate.py), the GPT-4-style judge
(judge.py) and the driver (run.py: `python -m hh_tldr.run --experiment hh --preset tiny`). They
train with the lesson's sft.py, reward.py, dpo.py and ppo.py."""
