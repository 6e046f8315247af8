"""fashion-cnn: a reproducible CNN pipeline for Fashion-MNIST (DVC stages, Hydra config, MLflow tracking).

Layout: `stages/` holds one thin module per DVC stage, `tools/` the user-facing commands, and the
modules here the library they call.
"""

import os
import time

# When the stage's process began to import the project (every stage imports this package first):
# cli.stage_main reports a stage's time from here, split into starting and its work.
IMPORT_STARTED = time.perf_counter()

# TensorFlow reads its C++ log level when it is first imported, and every stage imports this package
# first: the one place that hides TensorFlow's start-up chatter. Users may set their own level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
