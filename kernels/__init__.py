"""Triton kernels with plain-torch twins and one dispatch point."""
