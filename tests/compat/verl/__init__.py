"""tests/compat/verl."""
