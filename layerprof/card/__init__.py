"""The Layer Card: the plain data every other stage reads or writes.

``card`` holds the rows (``ModuleRow``, ``LayerRow``) and ``LayerCard`` with its file form;
``schema`` checks a card file before it becomes one; ``scores`` names the per-layer scores a
placement can maximize (and the default); ``cost`` is the cost column's model of a training
step; ``budget`` the training budget the budget-aware columns assume; ``rankcorr`` the rank
correlations behind the stability record; ``compare`` sets two cards side by side. Nothing here
computes statistics or trains anything.
"""

from .card import CardFormatError, LayerCard, LayerRow, ModuleRow

__all__ = ["CardFormatError", "LayerCard", "LayerRow", "ModuleRow"]
