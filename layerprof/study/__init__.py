"""The placement study's harness, fenced off from the product: only the CLI imports it.

``tasks`` builds the fine-tuning tasks, ``lora`` trains and evaluates the LoRA runs,
``protocol`` runs probes and placements over seeds and budgets and ``report`` writes the
tables. Its notebooks, data and newer studies live in the repository's ``studies/`` folder.
"""
