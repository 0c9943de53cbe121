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
from types import SimpleNamespace


@cache
def image_only(cls: type) -> type:
    """``cls`` (a ProcessorMixin subclass whose ``__init__`` takes a ``video_processor``)
    without its video processor."""
    import inspect

    # ProcessorMixin reads the sub-processor list from the __init__ signature and the settings
    # a saved processor may pass (SmolVLM's image_seq_len) from its code object, so the
    # subclass needs a real __init__ with cls's parameters minus video_processor.
    params = [p for name, p in inspect.signature(cls.__init__).parameters.items()
              if name not in ("self", "video_processor") and p.kind is p.POSITIONAL_OR_KEYWORD]
    defaults = {p.name: (None if p.default is p.empty else p.default) for p in params}
    names = [p.name for p in params]
    src = (f"def __init__(self, {', '.join(f'{n}=_defaults[{n!r}]' for n in names)}, **kwargs):\n"
           f"    _cls.__init__(self, video_processor=None, {', '.join(f'{n}={n}' for n in names)}, **kwargs)\n")
    namespace = {"_cls": cls, "_defaults": defaults}
    exec(src, namespace)  # source built above from parameter names only
    # SmolVLMProcessor.apply_chat_template reads video_processor.num_frames / .fps even for images
    no_video = SimpleNamespace(num_frames=None, fps=None)
    return type(cls.__name__, (cls,), {"__init__": namespace["__init__"], "__module__": cls.__module__,
                                       "video_processor": no_video, "image_only": True,
                                       "__doc__": f"{cls.__name__} without its video processor."})


def torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return is_torchvision_available()


def load_processor(path: str, **kwargs):
    """``AutoProcessor.from_pretrained(path)``; where that fails for want of torchvision and
    the saved processor is one with a video processor, the same class via :func:`image_only`."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except (OSError, ImportError, ValueError):
        if torchvision_available():
            raise
        cls = _video_capable_class(path, **kwargs)
        if cls is None:
            raise
    return image_only(cls).from_pretrained(path, **kwargs)


def _video_capable_class(path: str, **kwargs) -> type | None:
    """The processor class saved at ``path`` when its ``__init__`` takes a video processor."""
    import transformers
    from transformers.processing_utils import ProcessorMixin

    kwargs.pop("trust_remote_code", None)
    try:
        name = ProcessorMixin.get_processor_dict(path, **kwargs)[0].get("processor_class")
    except (OSError, ValueError):
        return None
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if cls is None or "video_processor" not in cls.get_attributes():
        return None
    return cls
