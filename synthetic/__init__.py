"""Synthetic corpora for offline runs and tests: reviews with a sentiment (reviews.py, the tiny
IMDb preset) and dialogues whose right answer is known (dialogues.py, the tiny HH preset)."""
