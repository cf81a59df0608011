"""Helpers shared by the test modules (tests/ is on sys.path under pytest's rootdir conftest)."""
