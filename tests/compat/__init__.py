"""Compatibility suites against other libraries' own tests."""
