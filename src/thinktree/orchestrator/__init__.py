"""The run: events, the problem tree, the budget ledger, the scheduler and the subscribers."""
