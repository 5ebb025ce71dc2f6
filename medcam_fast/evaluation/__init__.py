"""evaluation: TODO package docstring."""
