"""Drift detectors on embeddings."""
