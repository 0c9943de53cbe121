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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from captioning.cli import guarded, pop_debug
from captioning.errors import UserError
from captioning.files import check_writable, output_lock, write_atomic, write_json
from captioning.fingerprints import model_fingerprint
from captioning.images import ImageError
from captioning.records import TRAIN_CONFIG, TrainConfigRecord, TrainingRecord
from training.config import TrainConfig
from training.flags import build_parser, parse
from training.outputs import (
    CHECKPOINTS,
    LOGS,
    PREDICTIONS,
    STAGING,
    check_output,
    clear_output,
    finished_run,
    publish,
    resume_changes,
    select_checkpoint,
)


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
    import torch
    from accelerate import PartialState
    from transformers import EarlyStoppingCallback, TrainingArguments, set_seed
    from transformers.integrations import TensorBoardCallback

    from captioning.data import caption_transform, load_captions
    from captioning.generation import GenerationSettings
    from eval.provenance import library_versions, utc_now
    from training import data as tdata
    from training.engine import CaptionTrainer, EpochSync, caption_loss, trainer_metrics
    from training.evaluation import CaptionEvaluator
    from training.modeling import load_base, parameter_report, resolve_precision, setup_trainable, training_device_type

    started = time.time()
    # cpu=True where there is no GPU: that is what makes several processes use gloo
    # (MULTI_CPU); TrainingArguments(use_cpu=...) below builds the same state.
    use_cpu = training_device_type() == "cpu"
    state = PartialState(cpu=use_cpu)
    is_main = state.is_main_process
    say = log if is_main else (lambda *_: None)
    out = Path(cfg.output.dir or Path("runs") / cfg.name)
    cfg.output.dir = str(out)
    # --resume (the newest checkpoint) of a finished run is a no-op; a checkpoint named
    # explicitly is a deliberate restart from that step
    done = finished_run(out, cfg) if resume is True or resume == "latest" else None
    if done is not None:
        say(f"{out} already finished at step {done.train.get('global_step')} (metrics.json): nothing to resume, no "
            "file changed; pass a larger --optim.max_steps or --optim.num_train_epochs to train on")
        return out
    clear = check_output(out, cfg, resume)  # every process checks before anything is deleted
    check_writable(out, "output.dir")  # before the model loads
    state.wait_for_everyone()
    if clear and is_main:
        clear_output(out)
    state.wait_for_everyone()
    resume_from = select_checkpoint(out, resume, is_main=is_main, log=say) if resume else None
    state.wait_for_everyone()

    # ---- model and the resolved config
    set_seed(cfg.optim.seed)
    precision = resolve_precision(cfg.optim.precision, training_device_type())
    loaded = load_base(cfg)
    family, processor = loaded.family, loaded.processor
    cfg.model.family = family.name
    if cfg.data.prompt is None:
        cfg.data.prompt = loaded.prompt
    cfg.optim.precision = precision
    model = setup_trainable(loaded.model, family, cfg)
    if cfg.lora.enabled and loaded.base_ref:
        model.peft_config["default"].base_model_name_or_path = loaded.base_ref
    counts = parameter_report(model, family)
    method = "full" if not cfg.lora.enabled else ("qlora" if cfg.quantization.enabled else "lora")

    say("resolved config:\n" + cfg.to_yaml().rstrip())
    say(f"{method} fine-tuning of {loaded.base_ref or 'a random ' + family.name + ' model'}: "
        f"{counts['trainable']:,} of {counts['total']:,} parameters train ({precision})")
    ckpt_dir = out / CHECKPOINTS
    saved = TrainConfigRecord.find(ckpt_dir) if resume else None
    resumed = []  # earlier resumes of this run, and this one: where and what changed
    if saved is not None:
        changed = resume_changes(saved.doc, cfg)  # every process refuses before anything is written
        step = int(resume_from.name.rsplit("-", 1)[-1]) if resume_from.name.startswith("checkpoint-") else None
        finished = TrainingRecord.find(out)  # a finished run trained further
        if finished is not None:
            resumed = list(finished.doc.get("resumed") or [])
        resumed.append({"from_step": step, "changes": changed})
        if changed:
            say(f"resuming at step {step} with changed settings: " + "; ".join(changed))

    # ---- data
    d = cfg.data
    transform = caption_transform(d.caption_transform)
    train_set = load_captions(d.source, d.train_split, max_samples=d.max_train_samples, shuffle=d.shuffle,
                              seed=cfg.optim.seed, images_dir=d.images_dir).with_max_pixels(d.max_pixels)
    val_set = None
    if cfg.eval.enabled:
        # only the first images are ever used: do not read (or download) the whole split
        need = None if cfg.eval.loss_samples is None else max(cfg.eval.loss_samples, cfg.eval.generate_samples)
        val_set = load_captions(d.source, d.val_split, max_samples=need, images_dir=d.images_dir).with_max_pixels(
            d.max_pixels)
    skipped = []
    if d.skip_bad_images:
        train_set, skipped = train_set.without_bad_images()
        if val_set is not None:
            val_set, bad_val = val_set.without_bad_images()
            skipped += bad_val
        if skipped:
            say(f"data.skip_bad_images: left out {len(skipped)} unreadable image(s), first: {skipped[0]['file']}: "
                f"{skipped[0]['reason']} (all listed in metrics.json)")
    loss_set = val_set[:cfg.eval.loss_samples] if val_set is not None else None
    gen_set = val_set[:cfg.eval.generate_samples] if val_set is not None and cfg.eval.generate_samples else None
    train_cache = val_cache = None
    if d.feature_cache:
        tdata.check_feature_cache(family, model)
        t0 = time.time()
        dev = state.device
        if not cfg.quantization.enabled:  # bitsandbytes models already sit where device_map put them
            model.to(dev)
        fill = dict(batch_size=cfg.eval.batch_size, device=dev, dtype=torch.float32)
        train_cache = tdata.compute_feature_cache(model, family, processor, train_set, d.prompt, **fill)
        if loss_set is not None:
            val_cache = tdata.compute_feature_cache(model, family, processor, loss_set, d.prompt, **fill)
        n = len(train_set) + (len(loss_set) if val_cache is not None else 0)
        mib = (train_cache.nbytes() + (val_cache.nbytes() if val_cache is not None else 0)) / 2 ** 20
        say(f"feature cache: {n} images through the frozen vision tower + connector in {time.time() - t0:.1f}s "
            f"({mib:.1f} MiB)")
    train_ds = tdata.CaptionTrainDataset(train_set, family, processor, d.prompt, references=d.references,
                                         transform=transform, seed=cfg.optim.seed, cache=train_cache)
    eval_ds = (tdata.CaptionTrainDataset(loss_set, family, processor, d.prompt, references="all",
                                         transform=transform, seed=cfg.optim.seed, cache=val_cache)
               if loss_set is not None else None)
    evaluator = None
    # validation scores against the references rewritten as the targets are (a style fine-tune
    # is measured in its style); the record says which
    gen_refs = gen_set.with_caption_transform(d.caption_transform) if gen_set is not None else None
    if gen_set is not None:
        evaluator = CaptionEvaluator(
            gen_set, gen_refs.references_coco(), family=family, processor=processor, prompt=d.prompt,
            settings=GenerationSettings(max_new_tokens=cfg.eval.max_new_tokens, num_beams=cfg.eval.num_beams),
            metrics=cfg.eval.metrics, batch_size=cfg.eval.batch_size,
            scorer_factory=(lambda: scorer) if scorer is not None else None, base_ref=loaded.base_ref)

    # ---- the Trainer (the output folder is written from here on: a start that failed on the
    # model or the data above left nothing behind)
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(ckpt_dir / TRAIN_CONFIG, cfg.to_yaml())
    e, o, op = cfg.eval, cfg.output, cfg.optim
    eval_strategy = "no" if not e.enabled else ("steps" if e.every_steps else "epoch")
    if o.save_every_steps:
        save_strategy, save_steps = "steps", o.save_every_steps
    elif e.enabled:
        save_strategy, save_steps = eval_strategy, e.every_steps
    else:
        save_strategy, save_steps = "epoch", None
    load_best = e.enabled and e.load_best
    try:
        # the optim section carries TrainingArguments' own names (config.OptimConfig); the rest
        # is derived from the eval and output sections
        args = TrainingArguments(
            output_dir=str(ckpt_dir), **op.trainer_kwargs(), data_seed=op.seed,
            # non-reentrant: with a frozen tower and LoRA the inputs of the first checkpointed block
            # need no grad, and reentrant checkpointing would then drop every gradient
            activation_checkpointing_kwargs={"use_reentrant": False} if op.activation_checkpointing else None,
            per_device_eval_batch_size=e.batch_size,
            logging_strategy="steps", logging_steps=o.logging_steps, logging_first_step=True,
            eval_strategy=eval_strategy, eval_steps=e.every_steps,
            eval_on_start=e.enabled and e.on_start and not resume,
            save_strategy=save_strategy, save_steps=save_steps, save_total_limit=o.save_total_limit,
            load_best_model_at_end=load_best, metric_for_best_model=f"eval_{e.metric_for_best}" if load_best else None,
            greater_is_better=e.greater_is_better if load_best else None,
            report_to="none", disable_tqdm=not o.progress, bf16=precision == "bf16", fp16=precision == "fp16",
            remove_unused_columns=False, label_names=["labels"], prediction_loss_only=True,
            dataloader_num_workers=d.num_workers, use_cpu=use_cpu,
            # LoRA parameters are all used in every forward; full fine-tuning keeps DDP's check
            ddp_find_unused_parameters=False if cfg.lora.enabled else None,
        )
    except ValueError as err:
        raise UserError(f"the Trainer rejects these settings: {err}") from err
    callbacks = [EpochSync(train_ds)] + list(extra_callbacks or [])
    if e.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=e.early_stopping_patience))
    if o.tensorboard:
        tb = TensorBoardCallback()
        tb.logging_dir = str(out / LOGS)
        callbacks.append(tb)
    trainer = CaptionTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             data_collator=tdata.Collator(family, processor), processing_class=processor,
                             compute_loss_func=caption_loss(op.label_smoothing_factor, shift=family.shifts_labels),
                             callbacks=callbacks,
                             family=family, caption_evaluator=evaluator, log_fn=say)
    try:
        try:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except ImageError as err:  # found mid-run: data.skip_bad_images checks every image up front
            raise ImageError(f"{err}; replace the file and run again with --resume (it continues from the last "
                             "checkpoint, if one was saved), or start again with --data.skip_bad_images true to "
                             "leave unreadable images out") from None
        except (RuntimeError, OSError, ValueError, KeyError) as err:
            if resume_from is not None and _is_load_error(err):
                raise UserError(f"--resume: checkpoint {resume_from} cannot be loaded ({type(err).__name__}: "
                                f"{str(err).splitlines()[0][:200]}); delete it to resume from an earlier one, or "
                                "start again without --resume") from err
            raise

        # ---- final metrics: those of the model we keep
        summary, history = trainer_metrics(trainer.state.log_history)
        final: dict[str, Any] | None = None
        final_step = trainer.state.global_step
        if e.enabled:
            best = trainer.state.best_global_step
            if load_best and best and trainer.state.best_model_checkpoint:
                final_step = best
            final = next((h for h in history if h.get("step") == final_step), None)
            if final is None:
                final = {k.replace("eval_", ""): v for k, v in trainer.evaluate().items()}
                final_step = trainer.state.global_step
        staging = out / STAGING
        if is_main and staging.exists():
            shutil.rmtree(staging)
        state.wait_for_everyone()
        trainer.save_model(str(staging))
        state.wait_for_everyone()
        if is_main:
            (staging / "training_args.bin").unlink(missing_ok=True)
            write_atomic(staging / TRAIN_CONFIG, cfg.to_yaml())
            preds = evaluator.predictions.get(final_step) if evaluator is not None else None
            if preds is not None:
                write_json(staging / PREDICTIONS, preds, indent=1)
            metrics_keys = list(e.metrics) + ["loss", "perplexity"]
            val_metrics = {k: final.get(k) for k in metrics_keys if k in final} if final else {}
            record = {
                "metrics": val_metrics,
                "unavailable": {},
                "n_images": len(gen_set) if gen_set is not None else 0,
                "dataset": gen_refs.describe() if gen_refs is not None else None,
                "loss_dataset": loss_set.describe() if loss_set is not None else None,
                "train_dataset": train_set.describe(),
                "model": {"id": loaded.base_ref, "revision": cfg.model.revision, "family": family.name,
                          # what an adapter may later be merged into (release merge checks it)
                          "base_fingerprint": model_fingerprint(loaded.base_ref, cfg.model.revision),
                          "adapter": str(out) if cfg.lora.enabled else None, "method": method,
                          "factory": cfg.to_dict()["model"]["factory"], **counts},
                "generation": {"max_new_tokens": e.max_new_tokens, "num_beams": e.num_beams},
                "prompt": d.prompt,
                "train": {**summary, "global_step": trainer.state.global_step, "epoch": trainer.state.epoch},
                "best": {"metric": e.metric_for_best, "step": final_step,
                         "value": final.get(e.metric_for_best) if final else None,
                         "checkpoint": trainer.state.best_model_checkpoint} if e.enabled else None,
                "history": history,
                "resumed": resumed,
                "skipped_images": skipped,
                "versions": library_versions(),
                "command": command,
                "created": utc_now(),
                "seconds": round(time.time() - started, 1),
            }
            publish(staging, out, record)
        state.wait_for_everyone()
    finally:
        if evaluator is not None:
            evaluator.close()

    what = "adapter" if cfg.lora.enabled else "model"
    shown = ", ".join(f"{k} {v:.3f}" for k, v in (final or {}).items()
                      if k in list(e.metrics) + ["loss"] and isinstance(v, (int, float)))
    if shown:
        say(f"validation ({len(gen_set) if gen_set is not None else 0} images, step {final_step}): {shown}")
    say(f"done in {time.time() - started:.0f}s: {what} in {out}; evaluate it with: python eval/run.py generate "
        f"--model {out} --dataset {d.source} --split test --out {out / 'eval-test'}")
    return out


def _is_load_error(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(w in text for w in ("checkpoint", "pickle", "zip", "safetensor", "unpickl", "load", "state_dict",
                                   "header", "eof", "corrupt"))


# ---------------------------------------------------------------- CLI
def _say(message: str) -> None:
    """print, above the progress bars rather than through them (tqdm clears and redraws)."""
    from tqdm.auto import tqdm

    tqdm.write(message)


def cli_parser():
    """The config parser (training.config.build_parser) plus the flags that are not settings."""
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
