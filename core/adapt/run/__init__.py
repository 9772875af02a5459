"""One run's life outside the loop: its context (`adapt.Run`), its directory and lock, checkpoints, signals, the
summary it reports, and loading a finished run back."""
