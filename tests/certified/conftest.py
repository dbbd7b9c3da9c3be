"""Fixtures shared by the certified-removal tests (``one_thread`` is in tests/conftest.py)."""
