"""Training concerns: stage freezing, optimiser groups and schedules, strategies, callbacks."""
