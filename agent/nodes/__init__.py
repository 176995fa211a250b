"""The graph's nodes: ingest → think → act → rethink → answer, one module each."""
