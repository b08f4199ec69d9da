"""``POST /v1/embeddings`` and Cohere's ``POST /v2/embed``."""
