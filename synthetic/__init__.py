"""Synthetic corpora for offline runs and tests: reviews with a sentiment (reviews.py, the tiny
IMDb preset), dialogues whose right answer is known (dialogues.py, the tiny HH preset) and posts
whose best summary is known (summaries.py, the tiny TL;DR preset)."""
