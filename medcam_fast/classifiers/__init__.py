"""classifiers: TODO package docstring."""
