"""Training: Lightning modules, losses, callbacks."""
