"""Training loops that work on lowbit graphs (Quadapter)."""
