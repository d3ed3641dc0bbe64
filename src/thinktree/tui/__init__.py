"""The Textual app: a projection of the run's events. It never calls a model."""
