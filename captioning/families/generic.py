"""Any model that AutoModelForImageTextToText loads and whose processor has a
chat template: the base-class behaviour, unchanged."""

from captioning.families import register
from captioning.families.base import Family


@register
class GenericFamily(Family):
    name = "generic"

    def images_arg(self, images):
        # Most processors (Qwen2-VL, LLaVA, PaliGemma...) take a flat list with one
        # image per prompt; Idefics3 wants the nested form and has its own family.
        return list(images)
