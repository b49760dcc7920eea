"""repwatch monitor: Kafka consumer runtime, per-model pipelines, metrics, alerts, and the CLI."""
