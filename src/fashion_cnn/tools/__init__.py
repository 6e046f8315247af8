"""The user-facing tools, run as `python -m fashion_cnn.tools.<tool>`: predict, serve, compare, etc."""
