"""The DVC stages: one thin module per stage of dvc.yaml, run as `python -m fashion_cnn.stages.<stage>`."""
