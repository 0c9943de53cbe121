"""The Gradio Space: caption images and compare captioning models side by side.

    python space/app.py --models demo_out/release/tiny-smolvlm-ft,demo_out/models/tiny-smolvlm
    python space/app.py --models "HuggingFaceTB/SmolVLM-256M-Instruct,Salesforce/blip-image-captioning-base"
    CAPTION_MODELS="org/my-captioner" python space/app.py --host 0.0.0.0 --port 7860

Models come from ``--models``, else the ``CAPTION_MODELS`` environment variable (how a
deployed Space is configured), else ``space/models.yaml``. Each entry is a hub id or a
local folder, optionally followed by ``;key=value`` options: ``name=`` (display name),
``revision=``, ``trust_remote_code=true`` (never implied: only an explicit entry runs a
repository's own code). Models load lazily on first use and stay cached (``--max-loaded``).

This file lays out the UI and runs it; the parts live in ``caption_space/`` beside it.
Importing it has no side effects: :func:`build_demo` builds the app, :func:`main` launches it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from caption_space.batch_files import IMAGE_SUFFIXES, MAX_BATCH_IMAGES
from caption_space.components import FilesInput, image_input
from caption_space.decoding import DEFAULTS, MAX_BEAMS, MAX_NEW_TOKENS, MAX_VARIATIONS, decoding_note
from caption_space.failures import handled
from caption_space.handlers import BATCH_COLUMNS, MAX_COMPARE, MODELS_COLUMNS, SPACE_MAX_PIXELS, CaptionSpace, Limits
from caption_space.lineup import unique_labels
from caption_space.models import (
    MODELS_YAML,
    ModelEntry,
    ModelInfo,
    configured_models,
    dedupe,
    parse_models,
    read_model_info,
    same_model,
)
from caption_space.registry import DEFAULT_MAX_LOADED, ModelLoadError, ModelRegistry
from caption_space.views import about_markdown, card_line, card_not_comparable, compare_html, esc, metrics_line
from captioning.cli import ArgumentParser, guarded, pop_debug
from captioning.errors import UserError
from captioning.options import positive_int
from captioning.vocabulary import QUANTIZE_CHOICES

#: what tests, the load benchmark and scripts use of the Space
__all__ = ["MODELS_YAML", "CaptionSpace", "Limits", "ModelEntry", "ModelInfo", "ModelLoadError", "ModelRegistry",
           "UserError", "about_markdown", "build_demo", "card_not_comparable", "compare_html", "configured_models",
           "gr", "launch_kwargs", "main", "mcp_wanted", "metrics_line", "parse_models", "read_model_info", "same_model"]

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
ENV_MAX_LOADED = "CAPTION_MAX_LOADED"
ENV_MCP = "CAPTION_MCP"

THEME_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"],
                   font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
CSS = """
#captions textarea { font-size: 1.05em; }
footer { opacity: .7; }
/* a phone never scrolls the page sideways: a wide Markdown table scrolls in its own frame,
   and its cells wrap between words only (else a column shrinks to a letter per line) */
.prose table { display: block; max-width: 100%; overflow-x: auto; }
.prose th, .prose td { overflow-wrap: normal; word-break: normal; }
.prose th { white-space: nowrap; }
.decoding-note p { margin: 0; font-size: .9em; opacity: .85; }
"""
BEAMS_INFO = "for temperature 0; raised to Variations when lower; 1 while sampling"
#: events only the page uses: off the API page and the MCP tools
PRIVATE = dict(api_visibility="private")
#: a page-only event that answers at once (a placeholder while the real request runs): no
#: queue, no progress shown
INSTANT = dict(PRIVATE, queue=False, show_progress="hidden")
#: the handlers check model values themselves: Gradio's own check logs a traceback per bad value
PICK = dict(allow_custom_value=True)


def launch_kwargs(mcp: bool = True) -> dict[str, Any]:
    """Arguments for ``demo.launch``: theme/css (Gradio 6 takes them here), no SSR
    (a Node process that outlives close()), an upload size cap, the MCP server (the four
    public endpoints as tools) unless ``mcp`` is False. System fonts only, so the page
    never loads web fonts from a third party. The examples folder is served so the API
    page's sample image URL opens in a browser too.

    ``show_error``: Gradio sends a refusal's text only for a gr.Error, and every handler
    raises nothing else (caption_space.failures.handled); what Gradio itself refuses before
    a handler runs (a plain HTTP call missing inputs, a value of the wrong type) would
    otherwise reach the caller as ``{"error": null}``."""
    return dict(theme=gr.themes.Soft(**THEME_FONTS), css=CSS, ssr_mode=False, max_file_size="50mb",
                footer_links=["api", "settings"], share=False, mcp_server=mcp, allowed_paths=[str(EXAMPLES_DIR)],
                show_error=True)


def mcp_wanted(no_mcp: bool = False, env: dict[str, str] | None = None) -> bool:
    """Whether to serve MCP: on unless ``--no-mcp`` or ``CAPTION_MCP=0`` (or false/no/off)."""
    env = os.environ if env is None else env
    return not no_mcp and env.get(ENV_MCP, "1").strip().lower() not in {"0", "false", "no", "off"}


@handled
def refuse_or_clear(app: CaptionSpace, image, outputs: list) -> tuple:
    """At upload: a file that is not a readable image is taken off the input with a plain
    message (a toast and in place of the result); a good one clears the previous result,
    which described another image."""
    message, ok = app.check_upload(image)
    if ok:
        return (gr.skip(), *[None] * len(outputs))
    gr.Warning(message)
    shown = f"**Not used:** {esc(message)}"
    return (None, *[shown if isinstance(o, gr.Markdown) else
                    f'<p class="upload-refused">{esc(message)}</p>' if isinstance(o, gr.HTML) else None
                    for o in outputs])


@handled
def beams_for(temperature) -> dict:
    """Beams while sampling are 1 and greyed (the handlers refuse beams with sampling);
    back at temperature 0 they can be set again."""
    try:
        sampling = float(temperature) > 0
    except (TypeError, ValueError):
        sampling = False
    return gr.update(value=1, interactive=False) if sampling else gr.update(interactive=True)


@handled
def decoding_line(beams, temperature, variations=1) -> str:
    """The line under a tab's settings: how a request will decode."""
    return f"Decoding: {decoding_note(beams, temperature, variations)}"


def settings_panel(tab: str, *, variations: bool = False) -> tuple[list, gr.Slider | None, gr.Number]:
    """One tab's generation settings, collapsed beside its action: ``([max new tokens, beams,
    temperature, top-p], variations or None, seed)``, in the order the handlers take them.
    A line under them says how the request will decode, so Variations never changes Beams
    unseen."""
    with gr.Accordion("Settings", open=False, elem_id=f"{tab}_settings"):
        with gr.Row():
            max_new = gr.Slider(1, MAX_NEW_TOKENS, value=DEFAULTS.max_new_tokens, step=1, precision=0,
                                label="Max new tokens", elem_id=f"{tab}_max_new_tokens", min_width=160)
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature", min_width=160,
                                    info="0 = deterministic (greedy / beam search)", elem_id=f"{tab}_temperature")
            beams = gr.Slider(1, MAX_BEAMS, value=DEFAULTS.num_beams, step=1, precision=0, label="Beams",
                              min_width=160, info=BEAMS_INFO if variations else "for temperature 0; 1 while sampling",
                              elem_id=f"{tab}_num_beams")
            var = gr.Slider(1, MAX_VARIATIONS, value=DEFAULTS.num_captions, step=1, precision=0, label="Variations",
                            min_width=160, info="captions to return: samples when temperature > 0, else the best beams",
                            elem_id=f"{tab}_variations") if variations else None
            top_p = gr.Slider(0.05, 1, value=as_listed(DEFAULTS.top_p), step=0.05, label="Top-p",
                              info="used when sampling", min_width=160, elem_id=f"{tab}_top_p")
            seed = gr.Number(value=-1, precision=0, label="Seed", min_width=160,
                             info="-1 = random; the seed used is shown with each result", elem_id=f"{tab}_seed")
        note = gr.Markdown(f"Decoding: {decoding_note(DEFAULTS.num_beams, 0, DEFAULTS.num_captions)}",
                           elem_id=f"{tab}_decoding", elem_classes="decoding-note")
    temperature.change(beams_for, inputs=temperature, outputs=beams, **INSTANT)
    gr.on([c.change for c in (beams, temperature, var) if c is not None], decoding_line,
          inputs=[c for c in (beams, temperature, var) if c is not None], outputs=note, **INSTANT)
    return [max_new, beams, temperature, top_p], var, seed


def as_listed(value: float) -> float:
    """A default as a slider takes it: a whole number as an int, so the page, the API page and
    the MCP schema list top-p's 1 as ``1`` (not ``1.0``)."""
    return int(value) if float(value).is_integer() else value


def example_images(examples_dir: str | Path | None) -> list[Path]:
    """The images of ``examples_dir``, sorted (none when it is None or not a folder)."""
    if not examples_dir or not Path(examples_dir).is_dir():
        return []
    return sorted(p for p in Path(examples_dir).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def caption_tab(app: CaptionSpace, examples: list[Path], root: Callable[[], str | None]) -> None:
    """The Caption tab: one image, one model, its captions and a timing line (``/caption``)."""
    first_id, first = app.choices[0][1], app.infos[0]
    with gr.Tab("Caption", id="caption"):
        with gr.Row():
            with gr.Column():
                image = image_input(label="Image", elem_id="caption_image", height=320, examples=examples, root=root)
                shown_examples = gr.Examples([[str(p)] for p in examples], inputs=[image], label="Examples",
                                             examples_per_page=12, elem_id="caption_examples") if examples else None
            with gr.Column():
                model = gr.Dropdown(app.choices, value=first_id, label="Model", elem_id="caption_model", **PICK)
                card = gr.Markdown(card_line(first), label="card", elem_id="caption_card")
                prompt = gr.Textbox(value="", label="Prompt (instruct models)", lines=1, max_lines=3,
                                    interactive=first.takes_prompt, elem_id="prompt",
                                    placeholder=(f"default: {first.prompt or '(none)'}" if first.takes_prompt
                                                 else f"{first.family} captions without a prompt"))
                settings, variations, seed = settings_panel("caption", variations=True)
                go = gr.Button("Caption", variant="primary", elem_id="caption_btn")
                captions = gr.Textbox(label="Captions (one per line)", lines=2, max_lines=6,
                                      interactive=False, buttons=["copy"], elem_id="captions")
                timing = gr.Markdown(label="timing", elem_id="caption_time")
        model.change(app.model_info, inputs=model, outputs=[prompt, card], **PRIVATE)
        image.upload(lambda img: refuse_or_clear(app, img, [captions, timing]), inputs=image,
                     outputs=[image, captions, timing], **PRIVATE)
        if shown_examples is not None:
            # an example replaces the image as an upload does, so the old result goes too
            shown_examples.dataset.click(lambda: ("", None), outputs=[captions, timing], **INSTANT)
        go.click(lambda: ("", "*Captioning…*"), outputs=[captions, timing], **INSTANT) \
            .then(app.caption, inputs=[image, model, prompt, *settings, variations, seed],
                  outputs=[captions, timing], api_name="caption")


def compare_tab(app: CaptionSpace, examples: list[Path], root: Callable[[], str | None]) -> None:
    """The Compare tab: one image, 2-4 models side by side, one button per base and fine-tune
    pair (``/compare``)."""
    choices = app.choices
    with gr.Tab("Compare", id="compare"):
        with gr.Row():
            image = image_input(label="Image", elem_id="compare_image", height=260, examples=examples, root=root)
            with gr.Column():
                models = gr.Dropdown(choices, value=[c[1] for c in choices[:2]], multiselect=True,
                                     max_choices=MAX_COMPARE, label=f"Models (2-{MAX_COMPARE})",
                                     elem_id="compare_models", **PICK)
                for n, (base, ft) in enumerate(app.pairs):
                    btn = gr.Button(f"Base vs fine-tuned: {base.label} vs {ft.label}", size="sm",
                                    elem_id=f"preset_{n}")
                    btn.click(lambda n=n: app.preset(n), outputs=models, **PRIVATE)
                settings, _, seed = settings_panel("compare")
                go = gr.Button("Compare", variant="primary", elem_id="compare_btn")
                gr.Markdown("Same settings for every model; each uses its own prompt.")
        cards = gr.HTML(label="cards", elem_id="compare_cards")
        with gr.Accordion("Raw results (JSON)", open=False):
            raw = gr.JSON(label="results", elem_id="compare_json")
        image.upload(lambda img: refuse_or_clear(app, img, [cards, raw]), inputs=image,
                     outputs=[image, cards, raw], **PRIVATE)
        go.click(lambda: ("<p><em>Comparing…</em></p>", None), outputs=[cards, raw], **INSTANT) \
            .then(app.compare, inputs=[image, models, *settings, seed], outputs=[cards, raw], api_name="compare")


def batch_tab(app: CaptionSpace) -> None:
    """The Batch tab: many images or zips, one model, a table with CSV and JSON downloads
    (``/batch``)."""
    with gr.Tab("Batch", id="batch"):
        with gr.Row():
            files = FilesInput(file_count="multiple", file_types=["image", ".zip"],
                               label=f"Images or a .zip (up to {MAX_BATCH_IMAGES} images)", elem_id="batch_files")
            with gr.Column():
                model = gr.Dropdown(app.choices, value=app.choices[0][1], label="Model", elem_id="batch_model",
                                    **PICK)
                settings, _, seed = settings_panel("batch")
                go = gr.Button("Caption all", variant="primary", elem_id="batch_btn")
                summary = gr.Markdown(label="summary", elem_id="batch_summary")
                with gr.Row():
                    csv_file = gr.DownloadButton("Download CSV", elem_id="batch_csv")
                    json_file = gr.DownloadButton("Download JSON", elem_id="batch_json")
        table = gr.Dataframe(headers=BATCH_COLUMNS, interactive=False, wrap=True, label="captions",
                             elem_id="batch_table")
        outputs = [table, csv_file, json_file, summary]
        go.click(lambda: (None, None, None, "*Captioning…*"), outputs=outputs, **INSTANT) \
            .then(app.batch, inputs=[files, model, *settings, seed], outputs=outputs, api_name="batch")


def about_tab(app: CaptionSpace) -> gr.Dataframe:
    """The About tab: the models' live status (``/models``) and what the Space is; returns
    the status table, which the page fills when it loads."""
    choices = app.choices
    with gr.Tab("About", id="about"):
        status = gr.Dataframe(headers=MODELS_COLUMNS, interactive=False, label="Models (live status)",
                              elem_id="models_table")
        refresh = gr.Button("Refresh", size="sm", elem_id="models_refresh")
        with gr.Accordion("Models as the API returns them (/models)", open=False):
            models_json = gr.JSON(label="models", elem_id="models_json")
        gr.Markdown(about_markdown(app.infos, choices[0][1], [c[1] for c in choices[:2]]), elem_id="about_md")
        refresh.click(app.models, outputs=models_json, api_name="models")
        refresh.click(app.models_table, outputs=status, **PRIVATE)
    return status


def build_demo(models: Sequence[str | ModelEntry], *, max_loaded: int = DEFAULT_MAX_LOADED, device: str = "auto",
               dtype: str = "auto", quantize: str = "auto", limits: Limits | None = None, concurrency_limit: int = 2,
               max_queue: int = 64, examples_dir: str | Path | None = EXAMPLES_DIR,
               loader: Callable[..., Any] | None = None, prepack: bool = True) -> gr.Blocks:
    """The Space as a gr.Blocks (queued, not launched). ``models``: entries, or strings
    in the ``--models`` syntax (``ID[;key=value...]``).

    Reads each model's card files once; weights load on first use. The handlers are
    reachable as ``demo.caption_space`` (a :class:`CaptionSpace`).
    """
    entries = dedupe([e for m in models
                      for e in ([m] if isinstance(m, ModelEntry) else parse_models(str(m), where="models"))])
    if not entries:
        raise UserError("no models to serve: pass --models ID_OR_FOLDER[,...], set CAPTION_MODELS, "
                        "or list them in space/models.yaml")
    infos = [read_model_info(e) for e in entries]
    unique_labels(infos)
    registry = ModelRegistry(infos, max_loaded=max_loaded, device=device, dtype=dtype, loader=loader,
                             quantize=quantize, prepack=prepack)
    app = CaptionSpace(infos, registry, limits or Limits())
    examples = example_images(examples_dir)

    with gr.Blocks(title="Image captioning", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        def root() -> str | None:
            """Where this Space is reached, for the API page's sample image URL."""
            host = os.environ.get("SPACE_HOST", "").strip()
            return f"https://{host}" if host else getattr(demo, "local_url", None)

        gr.Markdown("# Image captioning\nCaption images with small vision-language models, and compare "
                    "base and fine-tuned models side by side.")
        with gr.Tabs():
            caption_tab(app, examples, root)
            compare_tab(app, examples, root)
            batch_tab(app)
            status = about_tab(app)
        demo.load(app.models_table, outputs=status, **PRIVATE)

    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue)
    demo.caption_space = app
    return demo


# ----------------------------------------------------------------------------------- CLI

def quiet_telemetry() -> None:
    """No Gradio version check or analytics posts, no Hugging Face telemetry, unless the
    environment asks for them. Called by :func:`main` rather than at import: Gradio reads its
    variable when a Blocks is built and launched, and huggingface_hub read its own when
    imported, so that flag is set where the library keeps it too."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_TELEMETRY = os.environ["HF_HUB_DISABLE_TELEMETRY"].upper() in {"1", "ON", "YES", "TRUE"}


def port_number(text: str) -> int:
    """argparse ``type``: a TCP port to listen on, 1-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number: use 1-65535")
    return value


def check_listen(host: str, port: int) -> None:
    """A UserError naming --host/--port when the server could not listen there; Gradio says
    only "Cannot find empty port" for a host that does not resolve, one that is not this
    machine's, and a port in use alike, and says it after every model is set up."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise UserError(f"--host {host}: not an address this machine can resolve ({getattr(e, 'strerror', e)}); "
                        "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"--port {port}: already in use on {host}; pass another --port, or stop what serves "
                                "there") from None
            raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); use 127.0.0.1 or "
                            "0.0.0.0, and a port from 1024 up unless you run as root") from None


def main(argv: list[str] | None = None) -> int:
    """Serve the Space (``python space/app.py --help``); returns the exit code."""
    quiet_telemetry()
    parser = ArgumentParser(prog="python space/app.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated hub ids or folders (default: $CAPTION_MODELS, "
                                          "then space/models.yaml)")
    # A Space sets GRADIO_SERVER_NAME=0.0.0.0; locally the default stays on loopback.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="interface to serve on (default: $GRADIO_SERVER_NAME, else 127.0.0.1)")
    # defaults from the environment stay strings: argparse checks them with the flag's own type
    parser.add_argument("--port", type=port_number, default=os.environ.get("GRADIO_SERVER_PORT", "7860"),
                        help="port to serve on, 1-65535 (default: $GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--max-loaded", type=positive_int,
                        default=os.environ.get(ENV_MAX_LOADED, str(DEFAULT_MAX_LOADED)),
                        help="models kept in memory at once (least recently used ones are dropped)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, ...")
    parser.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPUs, fp32 on CPU), fp32, bf16, fp16")
    parser.add_argument("--quantize", default="auto", choices=("auto", *QUANTIZE_CHOICES),
                        help="default for models that set none (a models entry's quantize=... wins): auto = int8 "
                             "on CPU for the families whose int8 captions passed the quality gate (BENCHMARKS.md), "
                             "none = full precision")
    parser.add_argument("--no-prepack", dest="prepack", action="store_false",
                        help="plain fp32 Linear layers instead of ones prepacked for oneDNN (CPU; prepacked is faster, "
                             "same captions: BENCHMARKS.md)")
    parser.add_argument("--concurrency", type=positive_int, default=2, help="requests worked on at once")
    parser.add_argument("--max-queue", type=positive_int, default=64,
                        help="requests waiting before new ones are refused")
    parser.add_argument("--no-mcp", action="store_true",
                        help="do not serve the MCP endpoint /gradio_api/mcp/ (also: CAPTION_MCP=0)")
    parser.add_argument("--max-pixels", type=int,
                        default=os.environ.get("CAPTION_MAX_PIXELS", str(SPACE_MAX_PIXELS)),
                        help=f"refuse uploads over this many pixels (default: $CAPTION_MAX_PIXELS, else "
                             f"{SPACE_MAX_PIXELS:,}); larger-than-needed images are downscaled before captioning")
    argv, debug = pop_debug(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage mistake already printed as one line
        return int(exc.code or 0)
    built = []

    def build() -> None:
        from captioning.loading import pick_device, pick_dtype

        # said at start, not to the first visitor: models load lazily, on first use
        pick_dtype(args.dtype, pick_device(args.device))
        check_listen(args.host, args.port)
        built.append(build_demo(
            configured_models(args.models), max_loaded=args.max_loaded, device=args.device, dtype=args.dtype,
            quantize=args.quantize, limits=Limits(max_pixels=args.max_pixels), concurrency_limit=args.concurrency,
            max_queue=args.max_queue, prepack=args.prepack))

    rc = guarded(build, debug=debug)
    if rc:
        return rc
    demo = built[0]
    print(f"serving {len(demo.caption_space.infos)} model(s) on http://{args.host}:{args.port}/ (Ctrl-C stops)",
          flush=True)

    def serve() -> None:
        try:
            demo.launch(server_name=args.host, server_port=args.port, **launch_kwargs(mcp_wanted(args.no_mcp)))
        except KeyboardInterrupt:  # Ctrl-C is how a server stops: exit code 0
            pass
        finally:
            demo.close()

    return guarded(serve, debug=debug)  # a port taken since check_listen is one line too


if __name__ == "__main__":
    sys.exit(main())
