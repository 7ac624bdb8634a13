"""The budget-aware predictions that run after the sweep on a few kept batches.

``coupling`` measures how adapting one layer changes the next layers' statistics,
``simulate`` trains LoRA on the local quadratic model for the user's step budget, and
``warmup`` allocates a short full-LoRA warm-up's loss change to layers. The pipeline's
``predict`` module runs them and attaches the columns to the card.
"""
