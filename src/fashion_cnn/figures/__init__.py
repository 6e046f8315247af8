"""Figures: the seed notebook's teaching figures and what the trained model learned."""
