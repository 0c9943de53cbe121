"""Processors for image-and-video VLMs on machines without torchvision.

Qwen2-VL, Qwen2.5-VL, Qwen3-VL and SmolVLM2 processors take a video processor as
well as an image processor, and every transformers video processor needs
torchvision. Without torchvision (this project does not install it: the only
wheel reachable here is a CUDA build that breaks the CPU torch), neither building
those processors nor ``AutoProcessor.from_pretrained`` works, even for images.

:func:`image_only` makes a subclass of such a processor class without the video
processor: same name (so a saved ``processor_config.json`` names the real class
and ``AutoProcessor`` loads the full processor wherever torchvision is installed),
same image and text behaviour. Captioning never passes videos, so nothing is lost.
transformers offers no switch for this, hence the subclass.
"""

from __future__ import annotations

from functools import cache


@cache
def image_only(cls: type) -> type:
    """``cls`` (a ProcessorMixin subclass whose ``__init__`` takes a ``video_processor``)
    without its video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # ProcessorMixin reads the attribute list from this signature: image_processor and tokenizer
        cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__,
                                       "__doc__": f"{cls.__name__} without its video processor."})


def torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return is_torchvision_available()


def load_processor(cls: type, path: str, **kwargs):
    """``cls.from_pretrained(path)``, through :func:`image_only` when torchvision is missing."""
    if torchvision_available():
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, **kwargs)
    return image_only(cls).from_pretrained(path, **kwargs)
