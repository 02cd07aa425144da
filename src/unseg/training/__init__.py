"""What trainers share: training data read from the feature store, decoder heads, ViT fine-tuning, TransFGU's losses."""
