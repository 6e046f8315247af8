"""fashion-cnn: a reproducible CNN pipeline for Fashion-MNIST (DVC stages, Hydra config, MLflow tracking)."""

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
