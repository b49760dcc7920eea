"""Adversarial detectors on embeddings."""
