"""Metrics: semantic and object scores, class-agnostic instance AP/AR, probes of frozen features."""
