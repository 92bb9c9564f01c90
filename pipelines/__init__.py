"""Data: dataset registry, readers of the real on-disk formats, domain shifts, loaders."""
