"""Training loop, optimizer, LR schedule, checkpointing, evaluation, metrics."""
