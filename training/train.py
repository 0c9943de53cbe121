"""Fine-tune a captioning model (LoRA, QLoRA or full) from a YAML recipe.

    python -m training.train --config training/recipes/shapes-tiny.yaml [--output.dir DIR] [--section.key value ...]
    python -m training.train --config training/recipes/shapes-tiny.yaml --resume    # continue the latest checkpoint
    python -m training.train --config training/recipes/shapes-tiny.yaml --print-config
    accelerate launch --num_processes 2 -m training.train --config ...               # several processes / GPUs

Flags override the recipe: ``--optim.learning_rate 1e-4``, ``--no-lora.use_dora`` /
``--lora.use_dora false``; ``--help`` lists every key (training.flags). The output folder
receives the adapter (or full model), the processor, ``train_config.yaml``, ``metrics.json``,
``val_predictions.json``, ``logs/`` (TensorBoard) and ``checkpoints/`` (training.outputs).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from captioning.cli import guarded, pop_debug
from captioning.files import output_lock
from training.config import TrainConfig
from training.flags import build_parser, parse
from training.outputs import CHECKPOINTS


# ---------------------------------------------------------------- the pure core
def train(cfg: TrainConfig, *, resume: bool | str = False, scorer: Any = None, command: str | None = None,
          log: Callable[[str], None] = print, callbacks: list | None = None) -> Path:
    """Train per ``cfg``; returns the output folder.

    ``resume``: True (or "latest") for the newest complete checkpoint, or a checkpoint path.
    ``scorer``: an eval.scoring.Scorer to reuse (tests share one); otherwise one is started
    for this run and kept warm across its validations. ``callbacks``: extra TrainerCallbacks.
    """
    import torch

    threads = torch.get_num_threads()
    if cfg.optim.num_threads:
        torch.set_num_threads(cfg.optim.num_threads)
    out = Path(cfg.output.dir or Path("runs") / cfg.name)
    # the main process (accelerate launch sets RANK) is the folder's one writer; the other
    # processes of the same run write beside it
    main_process = os.environ.get("RANK", "0") == "0"
    lock = output_lock(out, "--output-dir") if main_process else contextlib.nullcontext()
    existed = out.exists()
    try:
        with lock:
            try:
                return _train(cfg, resume=resume, scorer=scorer, command=command, log=log, extra_callbacks=callbacks)
            except BaseException:
                # a run that stops before its first checkpoint leaves nothing to resume: a folder
                # it created is removed, so a refused or interrupted start leaves no trace
                if main_process and not existed and not list((out / CHECKPOINTS).glob("checkpoint-*")):
                    shutil.rmtree(out, ignore_errors=True)
                raise
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, *, resume, scorer, command, log, extra_callbacks) -> Path:
    """The run, step by step (training.run_steps); each step takes what the earlier ones made."""
    from training import run_steps as step  # torch and transformers: loaded before the run's clock starts

    run = step.open_run(cfg, resume, log)
    if step.finished_already(run):
        return run.out
    run.resume_from = step.prepare_output(run)

    # ---- model and the resolved config
    model = step.load_model(run)
    resumed = step.resume_history(run)

    # ---- data
    data = step.load_data(run, model, scorer)

    # ---- the Trainer (the output folder is written from here on: a start that failed on the
    # model or the data above left nothing behind)
    trainer = step.build_trainer(run, model, data, extra_callbacks)
    try:
        step.fit(trainer, run.resume_from)

        # ---- final metrics: those of the model we keep
        final = step.final_metrics(trainer, cfg.eval)

        # ---- saving: the final files, metrics.json last
        step.save(run, model, data, trainer, final, resumed, command)
    finally:
        if data.evaluator is not None:
            data.evaluator.close()

    step.report(run, data, final)
    return run.out


# ---------------------------------------------------------------- CLI
def _say(message: str) -> None:
    """print, above the progress bars rather than through them (tqdm clears and redraws)."""
    from tqdm.auto import tqdm

    tqdm.write(message)


def cli_parser():
    """The config parser (training.flags.build_parser) plus the flags that are not settings."""
    parser = build_parser()
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                        help="continue from the newest complete checkpoint under OUTPUT_DIR/checkpoints (or CKPT)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m training.train``: 0 on success, 2 on a user mistake (one line on stderr)."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = "python -m training.train " + shlex.join(args)
    args, debug = pop_debug(args)
    parser = cli_parser()
    if "-h" in args or "--help" in args:
        parser.print_help()
        return 0

    def run() -> None:
        cfg, ns = parse(parser, args)
        if ns.print_config:
            print(cfg.to_yaml().rstrip())
            return
        train(cfg, resume=ns.resume, command=command, log=_say)

    return guarded(run, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
