"""Ood detectors on embeddings."""
