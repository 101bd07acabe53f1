"""Command-line tools, run with ``python -m scripts.<name>`` from the repository root (``check_install.py``, which
``make install`` runs as a file, excepted)."""
