"""bnnflow.sim."""
