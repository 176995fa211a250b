"""Retrieval over a case library: embedders, FAISS indexes, similar cases (built next)."""

__all__: list[str] = []
