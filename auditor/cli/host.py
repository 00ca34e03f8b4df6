"""Commands that run on or read from a GPU host: `daemon`, `doctor`, `status`."""
