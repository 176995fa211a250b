"""medloop's tools: image ingest and store, evidence types, and the expert tools.

The bottom layer: nothing here imports ``agent`` or ``retrievers``.
"""

__all__: list[str] = []
