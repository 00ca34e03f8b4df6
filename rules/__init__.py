"""Rules: one module per rule, thresholds from config; `rules.registry` holds the contract."""
