"""Checkpoints: Megatron-layout save/load, TP/PP resharding, and Hugging Face model/tokenizer conversion."""
