"""Model adapters and their registry.

Which model serves which job, loaded lazily once per process (packaged LiteMedSAM, transformers
SAM / detectors / classifiers, open_clip).
"""

__all__: list[str] = []
