"""explainer: TODO package docstring."""
