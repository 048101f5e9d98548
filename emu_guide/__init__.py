"""emu_guide: product-level glue shared by every package.

- ``emu_guide.types``: the shared dataclasses (Frame, PlanStep, Plan, ActionGoal, ...).
- ``emu_guide.optional``: the ONE place optional heavy dependencies are declared and required.
- ``emu_guide.cli``: the ``emu-guide`` console entry point (subcommands dispatch lazily).
- ``emu_guide.paths``: where generated artifacts and shipped weights live.
"""

__version__ = "0.1.0"
