"""Verifiers: agents that score candidates (LLM judges, reward models, user plugins)."""
