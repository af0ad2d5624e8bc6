"""The training loop: entry point, Trainer, one step's data plumbing, metrics, pre-emption."""
