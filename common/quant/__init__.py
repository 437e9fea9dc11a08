"""Quantization: number formats, post-training algorithms, packed storage, KV-cache quantization."""
