"""Answer-level trust.

The raw confidence, its calibration, claim-versus-evidence checks and self-consistency.
Everything that decides how much an answer may be believed.
"""

__all__: list[str] = []
