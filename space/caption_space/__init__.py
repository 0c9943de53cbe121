"""The Space's parts, split by job; ``app.py`` next to this folder lays out the UI and runs it.

- :mod:`.models`: the configured model list and what each model's files say about it
- :mod:`.lineup`: the served models as a set: names that tell them apart, base/fine-tune pairs
- :mod:`.registry`: loading models on first use, keeping the most recently used in memory
- :mod:`.components`: the few Gradio component overrides (raw uploads, no URL fetching)
- :mod:`.decoding`: generation defaults and limits, and how a request decodes in words
- :mod:`.batch_files`: a batch's images (zip members, size-capped) and its CSV/JSON exports
- :mod:`.handlers`: what each button does (:class:`~.handlers.CaptionSpace`)
- :mod:`.views`: HTML and Markdown shown in the UI

A deployed Space ships this folder next to ``app.py`` (``release space`` copies space/).
"""
