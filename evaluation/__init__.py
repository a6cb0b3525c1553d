"""Evaluation: the paper's metrics and protocols, MiniGPT-5 and the SD2 baseline, results tables."""
