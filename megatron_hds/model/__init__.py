"""The GPT model: stages, embeddings, transformer layers, optional fused backends."""
