"""What the planner sees: the tool set, the tools offered each round (routing), and the
offer's rendering. The graph's nodes only orchestrate; the choices live here."""

__all__: list[str] = []
