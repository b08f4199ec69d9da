"""``POST /score`` and ``/rerank``: vLLM's Score API and the rerank API."""
