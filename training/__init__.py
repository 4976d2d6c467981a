"""Compact CLIP trainer: tokenizer, ViT + text transformer, contrastive loss, FLIP masking, loader."""
