"""tests/compat/trl."""
