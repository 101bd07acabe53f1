"""The driver process: the training loop (``trainer``), starting the actors (``launch``, ``placement``), recovery
from their faults (``recovery``), and several runs in turn or side by side (``local_runs``, ``sweep``, ``demo``).
No re-exports: importing the package loads nothing."""
