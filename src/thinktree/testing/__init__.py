"""Test helpers: a scripted OpenAI-compatible HTTP server (:mod:`thinktree.testing.fake_server`)."""
