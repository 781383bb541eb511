"""Flax models: ViT backbones, the two SIGMMA encoders, and the model that joins them."""
