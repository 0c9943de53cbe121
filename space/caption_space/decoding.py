"""How a Space request decodes: the generation defaults (captioning.generation's own, so
the Space starts where every command does), the Space's tighter limits on them, and the
words that say how a request will decode."""

from __future__ import annotations

from captioning.generation import GenerationSettings

#: where every setting starts: max new tokens, beams, top-p and variations (num_captions) as
#: GenerationSettings declares them; the Space's own temperature 0 means no sampling
DEFAULTS = GenerationSettings()
#: a public server's limits, tighter than the command line's (captioning.generation)
MAX_NEW_TOKENS = 128
MAX_BEAMS = 8
MAX_VARIATIONS = 5


def decoding_note(num_beams, temperature, variations=1) -> str:
    """How a caption request decodes, in words: the one rule tying beams, temperature and
    variations together, shown beside the settings and with each result."""
    try:
        beams, temperature, n = int(num_beams), float(temperature), int(variations)
    except (TypeError, ValueError, OverflowError):
        return ""
    if temperature > 0:
        return (f"sampling {n} caption{'s' if n > 1 else ''} at temperature {temperature:g}"
                + ("" if beams == 1 else " (needs beams = 1)"))
    if n > 1:
        used = max(beams, n)
        return f"the {n} best of {used} beams" + (f" (beams raised to {n}, one per variation)" if n > beams else "")
    return "greedy decoding" if beams == 1 else f"beam search with {beams} beams"


def seed_note(settings) -> str:
    """What the timing line says about the seed: the one used when sampling, so it can be reused."""
    if settings.do_sample:
        return f"seed {settings.seed}"
    return "no seed needed (temperature 0)"
