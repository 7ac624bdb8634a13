"""``from layerprof.callback import LayerCardCallback``: the Trainer callback's public import path
(its code is in ``layerprof.integrations.callback``)."""
from .integrations.callback import LayerCardCallback, training_budget

__all__ = ["LayerCardCallback", "training_budget"]
