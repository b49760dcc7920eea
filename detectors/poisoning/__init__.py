"""Poisoning detectors on embeddings."""
