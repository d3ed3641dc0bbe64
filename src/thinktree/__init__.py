"""thinktree: test-time scaling for language models, with every branch and revision on view."""

__version__ = "0.1.0"

__all__ = ["__version__"]
