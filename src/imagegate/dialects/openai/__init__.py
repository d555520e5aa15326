"""The OpenAI Images dialect, both directions: `inbound` serves it, `upstream` calls providers that speak it."""
