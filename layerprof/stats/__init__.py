"""From a forward/backward sweep to the card's columns: capture → accumulate → reduce → finalize.

``capture`` hooks the targeted linears; ``accumulate`` adds each batch's statistics (Σ, C,
gradient energy, the split halves) through the backend ops of ``ops`` (torch, C++, CUDA,
Triton, one op namespace); ``reduce`` combines them across devices and processes; ``finalize``
turns them into resnorm, rank-r resnorm, energy, noise and the rest with the float64 linear
algebra of ``linalg`` and the damping rule of ``damping``.
"""
