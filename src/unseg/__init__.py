"""unseg: unsupervised object, semantic and instance segmentation from self-supervised ViT features.

The library is independent of Snakemake: every stage is a function of arrays and paths.
"""

__version__ = "0.1.0"
