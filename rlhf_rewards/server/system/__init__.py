"""Health, metrics, the model list and description, and the version."""
