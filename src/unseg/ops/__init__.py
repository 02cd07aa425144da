"""Numerical building blocks shared by stages: the batched spectral eigensolver, k-means, the dense CRF."""
