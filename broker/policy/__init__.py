"""The policy file: model, loading and pure evaluation."""
