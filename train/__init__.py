"""Training stack and the `energy-attn` command line."""
