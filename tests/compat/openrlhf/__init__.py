"""tests/compat/openrlhf."""
