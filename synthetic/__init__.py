"""Synthetic data and random model builders used by the demo, the tests and the benchmarks:
the shapes dataset (:mod:`synthetic.shapes`) and randomly initialised models of every
architecture the toolkit serves (:mod:`synthetic.factory`, with :mod:`synthetic.factory_chat`,
:mod:`synthetic.factory_video` and the offline tokenizers of :mod:`synthetic.tokenizer`).

Captioning, training, evaluating and releasing real models need none of it, except the shapes
grammar: eval.scene scores shapes-set captions with it and ``release merge`` draws its probe
images from it.
"""
