"""vLLM 0.33's own offline pooling tests and examples, ported to tiny local models (issue 15)."""
