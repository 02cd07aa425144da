"""Features: ViT backbones and their weights, extraction into the zarr feature store (writer and reader), TransFGU's
crop features and the fused large-run path."""
