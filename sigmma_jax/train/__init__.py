"""Training: losses, optimizer, state, the sharded step, checkpoints, metrics and the loop."""
