"""Commands of the rules and alerts: `rules check`, `digest`."""
