"""One training run: the data and loaders, the loop and its epochs, stages, the run
folder, the log, progress, peers and health checks (docs/layout.md)."""
