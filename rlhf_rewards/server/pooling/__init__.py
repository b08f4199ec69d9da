"""``POST /pooling``: vLLM's pooling API."""
