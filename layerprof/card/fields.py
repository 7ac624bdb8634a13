"""The field types of the card file, shared by its rows (``schema``) and its metadata (``meta``): sizes
and indices within sane bounds, finite and non-negative numbers, printable names."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_DIM = 2 ** 24               # d_in / d_out beyond this are corrupt, not a model
MAX_LAYER = 10 ** 6
MAX_RANK = 2 ** 16

Count = Annotated[int, Field(ge=0, le=2 ** 62)]
Dim = Annotated[int, Field(ge=1, le=MAX_DIM)]
LayerIndex = Annotated[int, Field(ge=0, le=MAX_LAYER)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=1000, pattern=r"^[^\x00-\x1f\x7f]+$")]
