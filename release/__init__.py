"""Release: merge LoRA adapters, render model cards, push models and the Space to the Hub.

The ``release`` console script is :mod:`release.cli`; each stage is a module with a pure
core function (``merge_adapter``, ``render_card``, ``push``, ``deploy_space``).
"""
