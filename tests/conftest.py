"""Shared fixtures: tiny models and files in the real formats, made on the fly."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("MPLBACKEND", "Agg")
