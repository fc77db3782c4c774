"""bnnflow.hw."""
