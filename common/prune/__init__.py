"""Pruning and low rank: one technique per file, each `prune_<name>(model, config, calib_batch) -> model`.

masks.py      N:M and unstructured masks, kept as buffers      magnitude.py  |w| scores
wanda.py      |w| * ||x|| scores (Sun et al. 2023)             sparsegpt.py  OBS reconstruction (Frantar & Alistarh 2023)
width.py      MLP channels and attention heads (Minitron)      depth.py      whole layers (ShortGPT)
lowrank.py    SVD factorization, plain and activation-aware    sensitivity.py  per-layer sensitivity, OWL-style allocation
row_sparsity.py  per-row sparsity in a matrix (TRIM-style)   cli.py        `workshop prune`, lab 03's main table
modelopt_sparsity.py  NVIDIA modelopt's 2:4 sparsify, side by side
"""
