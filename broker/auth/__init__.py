"""Who is calling: tokens, sessions, the device flow, rate limits and identity sources."""
