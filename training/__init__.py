"""Fine-tuning: ``python -m training.train --config training/recipes/NAME.yaml``.

Public API: :func:`training.train.train` (the core, ``train(cfg) -> Path``) and
:func:`training.flags.load_config` / :func:`training.flags.build_config`.
"""
