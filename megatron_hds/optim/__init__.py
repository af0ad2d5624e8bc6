"""Optimisation: AdamW with fp32 master weights and loss scaling, the distributed optimizer, the LR schedule."""
