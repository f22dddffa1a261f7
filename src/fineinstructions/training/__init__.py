"""Pre-training from scratch on generated pairs vs raw documents (token-for-token), and the shared training loop."""
