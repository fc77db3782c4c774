"""bnnflow.boards."""
