"""Training: state, optimiser, sharding, the jitted step, checkpoints and the loop."""
