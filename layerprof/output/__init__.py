"""What a card run leaves for people and for PEFT.

The report as Markdown (``report``) and as one offline HTML page with its figures
(``report_html``, ``plots``); the plan as a ``peft.LoraConfig``, a PEFT adapter folder or a
trainer config (``export``); and the set of files a card run writes, atomically (``outputs``).
"""
