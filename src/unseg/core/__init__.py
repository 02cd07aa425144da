"""Shared pieces every stage uses: files and images (io), image <-> token-grid geometry, devices, threads, OOM retry,
provenance sidecars, the workflow job around a runner call and resumable training state."""
