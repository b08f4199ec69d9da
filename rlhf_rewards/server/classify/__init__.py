"""``POST /classify``: vLLM's classification API."""
