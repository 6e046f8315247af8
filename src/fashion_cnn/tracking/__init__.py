"""MLflow: runs, tags, the keep-going logging policy, tracking-server faults, sweeps."""
