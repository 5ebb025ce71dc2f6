"""data: TODO package docstring."""
