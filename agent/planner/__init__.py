"""What the planner sees.

The tool set, the tools offered each round (routing), and the offer's rendering. The graph's
nodes only orchestrate; the choices live here.
"""

__all__: list[str] = []
