"""The DVC stages: one thin module per stage of dvc.yaml, run as `python -m fashion_cnn.stages.<stage>`."""

import sys

from fashion_cnn.utils import quiet

# Run as a program (Python sets argv[0] to "-m" while it imports the module's packages): keep
# TensorFlow's chatter out of the output before any stage imports TensorFlow.
if sys.argv[:1] == ["-m"]:
    quiet.install()
