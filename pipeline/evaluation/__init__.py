"""Evaluation: base, champion and candidate scored on the same held-out examples, and the gate over them."""
