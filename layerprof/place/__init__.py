"""Choosing the layers to adapt from a card.

``placement`` turns a card, a score and a budget (k layers, adapter parameters, a predicted
cost) into a ``Plan``; ``search`` holds the exact and greedy searches it uses.
"""
