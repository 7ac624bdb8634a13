"""The orchestration: one call from a model and batches to a card.

``profiler.profile`` and ``session.Profiler`` drive the stages below; ``config`` holds the
options, ``memory_plan`` and ``profile_cost`` size the sweep to the memory, ``build`` turns the
reduced statistics into a card, ``merge`` joins the cards of several sweeps, ``predict`` adds
the budget-aware columns, ``step_cost`` measures a training step for the cost column,
``progress`` reports, and ``benchmark`` times a sweep against the pass that feeds it.
"""
