"""The expert tools the planner calls.

Each a pure function over arrays beside a thin LangChain wrapper that returns ``Evidence``.
"""

__all__: list[str] = []
