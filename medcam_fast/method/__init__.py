"""method: TODO package docstring."""
