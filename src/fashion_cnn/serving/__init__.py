"""The trained model as a classifier of raw grey images, for predict and serve."""
