"""The book's ``dataset`` package: ``dataset.mnist`` (``python -m dlfast.compat`` maps it here)."""
