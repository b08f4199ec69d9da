"""The HTTP server (``rlhf-rewards serve``): vLLM's pooling API plus verl's and OpenRLHF's reward routes."""
