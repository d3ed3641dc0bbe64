"""Agents: the pieces that produce, score and combine candidate answers."""
