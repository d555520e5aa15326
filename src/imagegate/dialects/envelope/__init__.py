"""The envelope dialect (seed 000), both directions: `inbound` serves it, `upstream` calls providers that speak it."""
