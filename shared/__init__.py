"""Code that both the ``access`` CLI and the broker use: wire models, error codes, durations."""
