"""SIGMMA in JAX/Flax: multi-scale contrastive alignment of H&E with Xenium spatial transcriptomics."""

__version__ = "0.1.0"
