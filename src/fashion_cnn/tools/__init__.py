"""The user-facing tools, run as `python -m fashion_cnn.tools.<tool>`: predict, serve, compare, etc."""

import sys

from fashion_cnn.utils import quiet

# Run as a program: keep TensorFlow's chatter out of the output (see fashion_cnn.utils.quiet).
if sys.argv[:1] == ["-m"]:
    quiet.install()
