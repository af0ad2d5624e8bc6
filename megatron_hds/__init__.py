"""megatron_hds: Megatron-style GPT pre-training with an online data-mixture scheduler (HDS)."""

__version__ = "0.1.0"
