"""The dataset stage: dataset formats (one reader per benchmark layout), class tables, downloads, the synthetic demo
and the verified image index."""
