"""The task-jobs dialect (seed 002), both directions: `inbound` serves it, `upstream` calls providers that speak it."""
