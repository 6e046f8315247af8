"""params.yaml: the schema of its sections, validation with one-line errors, and the Hydra entry point."""
