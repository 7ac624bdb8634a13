"""layerprof inside other tools: the Hugging Face ``Trainer`` callback (``callback``).

Imported as ``layerprof.callback`` (a re-export kept for that path).
"""
