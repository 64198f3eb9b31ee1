"""TVM backend (see api.py)."""
