"""What each button of the Space does: :class:`CaptionSpace` holds the handlers (plain
methods, so tests call them directly), with the limits every input is held to."""

from __future__ import annotations

import dataclasses
import html
import re
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from captioning.errors import UserError
from captioning.generation import GenerationSettings, images_per_forward
from captioning.images import load_image
from captioning.records import precision_label

from .batch_files import batch_items, write_exports
from .decoding import DEFAULTS, MAX_BEAMS, MAX_NEW_TOKENS, MAX_VARIATIONS, decoding_note, seed_note
from .failures import handled, public_error
from .lineup import base_pairs
from .models import ModelInfo
from .registry import GENERATE_BATCH, ModelLoadError, ModelRegistry, generate, register, stable_ids
from .views import card_fields, card_line, compare_html, esc
from .views import models_table as views_models_table

#: larger uploads are resized to this many pixels before the processor sees them: the
#: processors shrink to <= 2048 px (SmolVLM with splitting) anyway, and a 50 MP photo
#: would otherwise cost seconds of resizing per request
DOWNSCALE_PIXELS = 2048 * 2048
#: uploads over this are refused: a public server needs a tighter bomb guard than a laptop
#: (captioning.images.MAX_PIXELS); a 48 MP phone photo (8064 x 6048) still passes
SPACE_MAX_PIXELS = 50_000_000
MAX_COMPARE = 4
MAX_PROMPT_CHARS = 500
BATCH_COLUMNS = ["file", "caption", "model", "error"]
#: the About tab's table: (header, key of a /models row)
MODELS_FIELDS = [("model", "model"), ("kind", "badge"), ("family", "family"), ("CIDEr", "CIDEr"),
                 ("BLEU-4", "BLEU-4"), ("split", "split"), ("images", "n_images"), ("set", "comparable_set"),
                 ("status", "status")]
MODELS_COLUMNS = [header for header, _ in MODELS_FIELDS]


@dataclass
class Limits:
    """Image limits applied to every input (uploads, webcam, paste, zip members)."""

    max_pixels: int | None = SPACE_MAX_PIXELS
    downscale_pixels: int | None = DOWNSCALE_PIXELS

    def __post_init__(self):
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UserError(f"--max-pixels must be a positive number of pixels, got {self.max_pixels}")


class CaptionSpace:
    """Handlers behind the UI (plain methods, so tests call them directly)."""

    def __init__(self, infos: Sequence[ModelInfo], registry: ModelRegistry, limits: Limits):
        self.infos = list(infos)
        self.registry = registry
        self.limits = limits
        self.token = register(registry)
        self._out_dir: Path | None = None
        self.pairs = base_pairs(self.infos)
        #: API id -> model, in configured order (what the API and the dropdowns' values use)
        self.by_id = stable_ids(self.infos)
        self._id_of = {info.key: mid for mid, info in self.by_id.items()}

    def model_id(self, info: ModelInfo) -> str:
        """The stable id ``info`` is addressed by in API calls (see registry.stable_ids)."""
        return self._id_of[info.key]

    @property
    def choices(self) -> list[tuple[str, str]]:
        """(display name, id) for the model dropdowns."""
        return [(info.label, mid) for mid, info in self.by_id.items()]

    @property
    def out_dir(self) -> Path:
        """Where batch CSV/JSON files are written (made on first use; Gradio serves
        returned files from the system temp dir)."""
        if self._out_dir is None:
            self._out_dir = Path(tempfile.mkdtemp(prefix="caption-space-"))
        return self._out_dir

    # ---------------------------------------------------------------- helpers
    def _image(self, value, what: str = "image"):
        if value is None:
            raise gr.Error(f"Upload an {what} first (or pick an example).", print_exception=False)
        if isinstance(value, tuple):
            source, name = value
        else:  # a plain path (gradio_client with another front end, tests)
            source, name = value, Path(str(value)).name
        return self._load(source, name)

    def _load(self, source, name: str):
        try:
            return load_image(source, name=name, max_pixels=self.limits.max_pixels,
                              downscale_pixels=self.limits.downscale_pixels)
        except UserError as e:
            raise gr.Error(esc(plain_image_error(str(e), name)), print_exception=False) from None

    @staticmethod
    def settings(max_new_tokens, num_beams, temperature, top_p, seed, num_captions: int = 1):
        """UI values -> GenerationSettings (temperature 0: greedy or beam search). Sampling
        with seed -1 draws a seed here, so the one used can be shown and reused."""
        try:
            max_new_tokens, num_beams, num_captions = int(max_new_tokens), int(num_beams), int(num_captions)
            temperature, top_p = float(temperature), float(top_p)
            seed = None if seed is None or int(seed) < 0 else int(seed)
        except (TypeError, ValueError, OverflowError):
            raise gr.Error("settings must be numbers", print_exception=False) from None
        checks = [(1 <= max_new_tokens <= MAX_NEW_TOKENS, f"max new tokens must be 1-{MAX_NEW_TOKENS}"),
                  (1 <= num_beams <= MAX_BEAMS, f"beams must be 1-{MAX_BEAMS}"),
                  (1 <= num_captions <= MAX_VARIATIONS, f"variations must be 1-{MAX_VARIATIONS}"),
                  (0 <= temperature <= 2, "temperature must be 0-2 (0: no sampling)"),
                  (0 < top_p <= 1, "top-p must be in (0, 1]"),
                  (seed is None or seed < 2**32, "seed must be -1 (random) or 0-4294967295"),
                  # sampling draws each variation on its own; beams would silently change what that means
                  (temperature == 0 or num_beams == 1, "beams are for temperature 0: set beams to 1 to sample, "
                                                       "or temperature to 0 for beam search")]
        for ok, msg in checks:
            if not ok:
                raise gr.Error(msg, print_exception=False)
        sample = temperature > 0
        if sample and seed is None:
            seed = secrets.randbelow(2**31)
        try:
            return GenerationSettings(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=sample,
                                      temperature=temperature if sample else DEFAULTS.temperature,
                                      top_p=top_p if sample else DEFAULTS.top_p,
                                      num_captions=num_captions, seed=seed if sample else None)
        except UserError as e:
            raise public_error(e) from None

    def _prompt_for(self, info: ModelInfo, prompt: str | None) -> str | None:
        prompt = (prompt or "").strip()
        if len(prompt) > MAX_PROMPT_CHARS:
            raise gr.Error(f"the prompt is longer than {MAX_PROMPT_CHARS} characters", print_exception=False)
        if prompt and not info.takes_prompt:
            raise gr.Error(f"{esc(info.label)} ({info.family}) captions without a prompt: leave it empty",
                           print_exception=False)
        return prompt or None

    def _run(self, key: str, images: list, prompt: str | None, settings):
        """(captions, captioner, load seconds, generation seconds); a model that cannot
        load raises ModelLoadError, bad settings for this model gr.Error."""
        captioner, load_s = self.registry.get(key)
        # the settings the page has no control for, as this model's entry sets them (models.yaml)
        settings = dataclasses.replace(settings, **dict(self.registry.info(key).entry.decoding))
        start = time.perf_counter()
        try:
            out = generate(self.token, key, images, prompt, settings)
        except ModelLoadError:
            raise
        except UserError as e:
            raise public_error(e) from None
        except Exception as e:  # the model's name, as compare shows one error per model
            raise public_error(e, f"{self.registry.info(key).label}: generation failed: ") from None
        return out, captioner, load_s, time.perf_counter() - start

    def _info(self, model) -> ModelInfo:
        """The model an API or UI value names (its id; None: the first served model)."""
        if model is None or model == "":
            return self.infos[0]
        info = self.by_id.get(str(model))
        if info is None:
            raise gr.Error(esc(f"unknown model {str(model)[:200]!r}: use one of {', '.join(self.by_id)} "
                               "(listed by /models)"), print_exception=False)
        return info

    # ------------------------------------------- handlers (each through failures.handled)
    @handled
    def caption(self, image: str, model: str | None = None, prompt: str = "",
                max_new_tokens: int = DEFAULTS.max_new_tokens, num_beams: int = DEFAULTS.num_beams,
                temperature: float = 0.0, top_p: float = DEFAULTS.top_p, variations: int = DEFAULTS.num_captions,
                seed: int = -1) -> tuple[str, str]:
        """Caption one image with one model.

        Args:
            image: the image to caption (PNG, JPEG, WebP, GIF, BMP or TIFF): a file, a data: URL, or the
                URL of a file uploaded to this Space; other URLs are not fetched.
            model: id of the model to use (see the models tool); empty for the first one served.
            prompt: instruction for instruct models (empty: the model's own default); BLIP models take none.
            max_new_tokens: longest caption, in tokens (1-128).
            num_beams: beams for beam search when temperature is 0 (1: greedy decoding); must be 1 when sampling.
            temperature: 0 for deterministic decoding; above 0 (up to 2) samples.
            top_p: nucleus sampling threshold in (0, 1], used when sampling.
            variations: number of captions (1-5): sampled ones when temperature > 0, else the best beams
                (beams are raised to this number when lower).
            seed: seed for sampling; -1 draws one, which the timing line reports so it can be reused.

        Returns:
            The captions, one per line, and a line with the time taken, device and seed used.
        """
        info = self._info(model)
        settings = self.settings(max_new_tokens, num_beams, temperature, top_p, seed, variations)
        img = self._image(image)
        prompt = self._prompt_for(info, prompt)
        out, cap, load_s, gen_s = self._run(info.key, [img], prompt, settings)
        timing = f"**{load_s + gen_s:.2f} s** · generation {gen_s:.2f} s"
        if load_s:
            timing += f" · model load {load_s:.2f} s"
        decoding = decoding_note(settings.num_beams, temperature, settings.num_captions)
        # the words metrics.json's record_precision prints: one image, so one per forward
        precision = precision_label(str(cap.dtype).replace("torch.", ""), getattr(cap, "quantize", None),
                                   images_per_forward(cap, 1))
        timing += f" · {cap.device.type}, {precision}"
        timing += f" · {decoding} · {seed_note(settings)}"
        return "\n".join(out[0]), timing

    @handled
    def compare(self, image: str, models: list[str] | None = None, max_new_tokens: int = DEFAULTS.max_new_tokens,
                num_beams: int = DEFAULTS.num_beams, temperature: float = 0.0, top_p: float = DEFAULTS.top_p,
                seed: int = -1) -> tuple[str, list[dict]]:
        """Caption one image with 2-4 models and the same settings, side by side.

        Args:
            image: the image to caption (PNG, JPEG, WebP, GIF, BMP or TIFF): a file, a data: URL, or the
                URL of a file uploaded to this Space; other URLs are not fetched.
            models: ids of 2 to 4 different models (see the models tool); empty for the first two served.
            max_new_tokens: longest caption, in tokens (1-128).
            num_beams: beams for beam search when temperature is 0 (1: greedy decoding); must be 1 when sampling.
            temperature: 0 for deterministic decoding; above 0 (up to 2) samples.
            top_p: nucleus sampling threshold in (0, 1], used when sampling.
            seed: seed for sampling, the same for every model; -1 draws one (reported per result).

        Returns:
            Cards as HTML, and per model its id, name, caption, seconds, error and card metrics (numbers)
            with whether those compare with the first model's (and why not) and the seed used.
        """
        if models is None or models == []:
            models = [self.model_id(i) for i in self.infos[:2]]
        models = [models] if isinstance(models, str) else list(models)
        if not 2 <= len(models) <= MAX_COMPARE:
            raise gr.Error(f"Pick 2 to {MAX_COMPARE} models to compare (got {len(models)}).",
                           print_exception=False)
        if len(set(models)) != len(models):
            raise gr.Error("Each model can be picked once.", print_exception=False)
        infos = [self._info(m) for m in models]
        settings = self.settings(max_new_tokens, num_beams, temperature, top_p, seed)
        img = self._image(image)
        results = []
        first = next((i for i in infos if i.metrics), None)
        for info in infos:
            row: dict[str, Any] = {"model": self.model_id(info), "name": info.label, "family": info.family,
                                   "caption": None, "seconds": None, "load_seconds": None, "error": None,
                                   **card_fields(first, info), "seed": settings.seed}
            try:
                out, _, load_s, gen_s = self._run(info.key, [img], None, settings)
                row.update(caption=out[0][0], seconds=round(gen_s, 4), load_seconds=round(load_s, 4))
            except gr.Error as e:
                row["error"] = e.message
            except ModelLoadError as e:
                row["error"] = str(e)
            results.append(row)
        return compare_html(results), results

    @handled
    def batch(self, files: list[str], model: str | None = None, max_new_tokens: int = DEFAULTS.max_new_tokens,
              num_beams: int = DEFAULTS.num_beams, temperature: float = 0.0, top_p: float = DEFAULTS.top_p,
              seed: int = -1,
              progress=gr.Progress()) -> tuple[list[list[str]], str, str, str]:  # noqa: B008 - how Gradio injects it
        """Caption several images (or .zip files of images) with one model.

        Args:
            files: image files, or .zip files of images (up to 64 images in all); URLs only of files
                uploaded to this Space.
            model: id of the model to use (see the models tool); empty for the first one served.
            max_new_tokens: longest caption, in tokens (1-128).
            num_beams: beams for beam search when temperature is 0 (1: greedy decoding); must be 1 when sampling.
            temperature: 0 for deterministic decoding; above 0 (up to 2) samples.
            top_p: nucleus sampling threshold in (0, 1], used when sampling.
            seed: seed for sampling; -1 draws one (recorded in every exported row).

        Returns:
            A table of file, caption, model and error; a CSV and a JSON file whose rows also carry
            the model id, the settings and the seed; and a summary line with the total time.
        """
        start = time.perf_counter()
        info = self._info(model)
        settings = self.settings(max_new_tokens, num_beams, temperature, top_p, seed)
        paths = [files] if isinstance(files, str) else list(files or [])
        if not paths:
            raise gr.Error("Upload images (or a .zip of images) first.", print_exception=False)
        progress(0, desc="reading images")
        items = batch_items(paths)
        used = {"model": self.model_id(info), "model_name": info.label,
                "max_new_tokens": settings.max_new_tokens, "num_beams": settings.num_beams,
                "temperature": settings.temperature if settings.do_sample else 0.0,
                "top_p": settings.top_p, "seed": settings.seed}
        rows: list[dict[str, Any]] = []
        good: list[tuple[int, Any]] = []
        for name, source in items:
            rows.append({"file": name, "caption": "", "error": "", **used})
            try:
                good.append((len(rows) - 1, self._load(source, name)))
            except Exception as e:  # that image's row says why; the others go on
                rows[-1]["error"] = html.unescape(public_error(e).message)
        if good:
            progress(0, desc=f"loading {info.label}")
            self.registry.get(info.key)
            done = 0
            progress((0, len(good)), desc="captioning", unit="images")
            for first in range(0, len(good), GENERATE_BATCH):
                chunk = good[first:first + GENERATE_BATCH]
                out = self._run(info.key, [img for _, img in chunk], None, settings)[0]
                for (row, _), caps in zip(chunk, out, strict=True):
                    rows[row]["caption"] = caps[0]
                done += len(chunk)
                progress((done, len(good)), desc="captioning", unit="images")
        csv_path, json_path = write_exports(self.out_dir, rows)
        n_err = sum(1 for r in rows if r["error"])
        summary = (f"{len(rows) - n_err} of {len(rows)} images captioned with **{esc(info.label)}** "
                   f"in {time.perf_counter() - start:.1f} s · {seed_note(settings)}")
        if n_err:
            summary += f"; {n_err} could not be read (see the error column)"
        table = [[r["model_name"] if c == "model" else r[c] for c in BATCH_COLUMNS] for r in rows]
        return table, str(csv_path), str(json_path), summary

    @handled
    def check_upload(self, image):
        """An image just uploaded (or picked) -> whether it can be captioned: (message, ok).
        Runs at upload, so a file that is not a readable image is refused before any click."""
        if image is None:
            return "", True
        try:
            self._image(image)
        except Exception as e:
            return html.unescape(public_error(e).message), False
        return "", True

    @handled
    def model_info(self, model):
        """Model picked in the Caption tab -> prompt box state and a one-line card."""
        info = self._info(model)
        if info.takes_prompt:
            prompt = gr.Textbox(interactive=True, placeholder=f"default: {info.prompt or '(none)'}")
        else:
            prompt = gr.Textbox(value="", interactive=False,
                                placeholder=f"{info.family or 'this model'} captions without a prompt")
        return prompt, card_line(info)

    def _status(self) -> dict[str, str]:
        loaded = set(self.registry.loaded())
        out = {}
        for info in self.infos:
            failure = self.registry.failure(info.key)
            out[info.key] = "in memory" if info.key in loaded else ("failed: " + failure if failure else "not loaded")
        return out

    @handled
    def models(self) -> list[dict]:
        """The models this Space serves, what each is, and the metrics their cards report.

        Returns:
            One entry per model: model (the id the other tools take), its name and what it is (base,
            fine-tune or untrained; its base by id), family, CIDEr and BLEU-4 as numbers (null when
            unknown) with what they were measured on, comparable_set (entries with the same letter
            can be compared), and status (not loaded, in memory or failed).
        """
        return views_models_table(self.infos, self._status(), ids=self._id_of)

    @handled
    def models_table(self):
        """The About tab's table: the rows of :meth:`models`, as MODELS_FIELDS says."""
        return [[row.get(key) for _, key in MODELS_FIELDS] for row in self.models()]

    @handled
    def preset(self, index: int):
        """The Compare tab's models for the ``index``-th base vs fine-tuned button."""
        base, ft = self.pairs[index]
        return [self.model_id(base), self.model_id(ft)]


#: the image reader's refusal of an image over a pixel limit (its own, or Pillow's): the
#: image's size, and the limit it is over
_OVER_LIMIT = re.compile(r"image is (?P<size>.+?), over (?:the|Pillow's own) limit of (?P<limit>\d[\d,]*)")


def plain_image_error(message: str, name: str) -> str:
    """The image reader's message in a visitor's words: an image over the pixel limit is told
    the limit and to upload a smaller one (the reader's advice is for whoever runs the
    command: flags a visitor cannot pass); anything about a decoder becomes one plain line
    naming the formats that work; other size messages are kept as they are."""
    over = _OVER_LIMIT.search(message)
    if over:
        return (f"{name}: the image is {over['size']}, over this Space's limit of {over['limit']} pixels: "
                "upload a smaller image")
    if "pixels" in message and "Pillow" not in message and "PIL" not in message:
        return message
    return f"{name}: not an image file we can read; upload a PNG, JPEG, WebP, GIF, BMP or TIFF image"

