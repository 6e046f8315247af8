"""Small shared utilities: atomic writes, record readers, paths, progress, quiet TensorFlow, the machine."""
