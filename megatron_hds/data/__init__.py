"""Data: Megatron indexed datasets, tokenizer, per-domain preprocessing outputs, quality sidecars."""
