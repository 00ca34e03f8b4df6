"""Rules: one module per rule, registered in a small registry, thresholds from config."""
