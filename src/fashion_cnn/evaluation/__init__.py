"""Scoring a trained model on the test split and keeping what it computed for the figures."""
