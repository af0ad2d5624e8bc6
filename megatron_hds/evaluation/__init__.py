"""Evaluation: held-out per-domain validation/test losses, and downstream tasks with lm-evaluation-harness."""
