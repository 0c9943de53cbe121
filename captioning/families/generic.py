"""Any model that AutoModelForImageTextToText loads and whose processor has a chat
template: the base-class behaviour, unchanged (Gemma 3, LLaVA, Idefics2, ...)."""

from captioning.families import register
from captioning.families.base import Family


@register
class GenericFamily(Family):
    name = "generic"
