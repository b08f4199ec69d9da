"""``POST /generative_scoring``: vLLM 0.32's Generative Scoring API on causal LMs."""
