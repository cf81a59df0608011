"""Whole jobs built from the library: the demo (train, export, run everywhere) and fit (architecture search
under a memory budget)."""
