"""Run: what a command does around training: checks before it starts, threads, W&B, resume, checkpoints, console.

May import data and model code; the data and model layers never import this one.
"""
