"""Training: the recipe, the loop, devices, strategies, checkpoints, history, the trained model's record."""
