"""Evaluation of CLIP checkpoints: zero-shot, retrieval, linear probe, scaling laws, overlap-aware."""
