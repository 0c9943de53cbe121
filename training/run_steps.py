"""The steps of one training run, in the order training.train's ``_train`` takes them:
open the run (processes, output folder, checkpoint to resume from), load the model, read the
data, set up the Trainer, train, pick the final metrics, save, report. Each step gets what
it needs from the earlier ones as arguments (:class:`Run`, :class:`TrainedModel`,
:class:`RunData`, :class:`FinalMetrics`).

Importing this module loads torch and transformers: training.train imports it only when a
run starts (``--help`` and ``--print-config`` stay quick), before the run's clock starts."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import EarlyStoppingCallback, TrainingArguments, set_seed
from transformers.integrations import TensorBoardCallback

from captioning.data import CaptionDataset, caption_transform, load_captions
from captioning.errors import UserError
from captioning.files import check_writable, write_atomic, write_json
from captioning.fingerprints import model_fingerprint
from captioning.generation import GenerationSettings
from captioning.images import ImageError
from captioning.lora_targets import coverage_text
from captioning.records import TRAIN_CONFIG, TrainConfigRecord, TrainingRecord
from eval.provenance import library_versions, utc_now
from training import data as tdata
from training.config import EvalConfig, TrainConfig
from training.engine import CaptionTrainer, EpochSync, caption_loss, trainer_metrics
from training.evaluation import CaptionEvaluator
from training.modeling import (
    LoadedBase,
    load_base,
    lora_coverage,
    parameter_report,
    resolve_precision,
    setup_trainable,
    training_device_type,
)
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


@dataclass
class Run:
    """What every step of one run shares: its config, output folder, process and log."""

    cfg: TrainConfig
    out: Path
    state: PartialState
    use_cpu: bool
    say: Callable[[str], None]  # the log on the main process, silent on the others
    resume: bool | str
    started: float
    resume_from: Path | None = None  # the checkpoint the Trainer continues from

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def ckpt_dir(self) -> Path:
        return self.out / CHECKPOINTS


@dataclass
class TrainedModel:
    """The base as loaded and the model that trains, with what the log and the record say of it."""

    loaded: LoadedBase
    model: Any  # a PeftModel for LoRA/QLoRA
    counts: dict[str, int]  # trainable and total parameters
    method: str  # lora, qlora or full
    precision: str  # resolved for the device
    #: the language-model linear layers LoRA reaches (captioning.lora_targets.coverage); None: full
    lora_coverage: dict[str, Any] | None = None


@dataclass
class RunData:
    """The splits a run reads, the datasets the Trainer takes and the validation captioner."""

    train_set: CaptionDataset
    loss_set: CaptionDataset | None  # val images for the loss
    gen_set: CaptionDataset | None  # val images captioned for the metrics
    gen_refs: CaptionDataset | None  # gen_set with the references transformed as the targets are
    skipped: list[dict]  # data.skip_bad_images: the images left out
    train_ds: tdata.CaptionTrainDataset
    eval_ds: tdata.CaptionTrainDataset | None
    evaluator: CaptionEvaluator | None

    @property
    def n_generated(self) -> int:
        return len(self.gen_set) if self.gen_set is not None else 0


@dataclass
class FinalMetrics:
    """The Trainer's summary and validation history, and the validation of the model kept."""

    summary: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any] | None  # None without validation
    step: int


def open_run(cfg: TrainConfig, resume: bool | str, log: Callable[[str], None]) -> Run:
    """Start the run's clock and its processes (accelerate), and fix its output folder in ``cfg``."""
    started = time.time()
    # cpu=True where there is no GPU: that is what makes several processes use gloo
    # (MULTI_CPU); TrainingArguments(use_cpu=...) in _training_arguments builds the same state.
    use_cpu = training_device_type() == "cpu"
    state = PartialState(cpu=use_cpu)
    say = log if state.is_main_process else (lambda *_: None)
    out = Path(cfg.output.dir or Path("runs") / cfg.name)
    cfg.output.dir = str(out)
    return Run(cfg=cfg, out=out, state=state, use_cpu=use_cpu, say=say, resume=resume, started=started)


def finished_already(run: Run) -> bool:
    """True (and said) when ``--resume`` finds the run already finished: nothing is to be done."""
    # --resume (the newest checkpoint) of a finished run is a no-op; a checkpoint named
    # explicitly is a deliberate restart from that step
    done = finished_run(run.out, run.cfg) if run.resume is True or run.resume == "latest" else None
    if done is not None:
        run.say(f"{run.out} already finished at step {done.train.get('global_step')} (metrics.json): nothing to "
                "resume, no file changed; pass a larger --optim.max_steps or --optim.num_train_epochs to train on")
    return done is not None


def prepare_output(run: Run) -> Path | None:
    """Check (and with --output.overwrite clear) the output folder; the checkpoint to resume from."""
    out, state = run.out, run.state
    clear = check_output(out, run.cfg, run.resume)  # every process checks before anything is deleted
    check_writable(out, "output.dir")  # before the model loads
    state.wait_for_everyone()
    if clear and run.is_main:
        clear_output(out)
    state.wait_for_everyone()
    resume_from = select_checkpoint(out, run.resume, is_main=run.is_main, log=run.say) if run.resume else None
    state.wait_for_everyone()
    return resume_from


def load_model(run: Run) -> TrainedModel:
    """Load the base, set up what trains, and complete the config with what loading resolved."""
    cfg = run.cfg
    set_seed(cfg.optim.seed)
    precision = resolve_precision(cfg.optim.precision, training_device_type())
    loaded = load_base(cfg)
    family = loaded.family
    cfg.model.family = family.name
    if cfg.data.prompt is None:
        cfg.data.prompt = loaded.prompt
    cfg.optim.precision = precision
    _resumed_targets(run)
    # read before wrapping (and before the default targets are written into cfg)
    coverage = lora_coverage(loaded.model, family, cfg) if cfg.lora.enabled else None
    model = setup_trainable(loaded.model, family, cfg)
    if cfg.lora.enabled and loaded.base_ref:
        model.peft_config["default"].base_model_name_or_path = loaded.base_ref
    counts = parameter_report(model, family)
    method = "full" if not cfg.lora.enabled else ("qlora" if cfg.quantization.enabled else "lora")

    run.say("resolved config:\n" + cfg.to_yaml().rstrip())
    run.say(f"{method} fine-tuning of {loaded.base_ref or 'a random ' + family.name + ' model'}: "
            f"{counts['trainable']:,} of {counts['total']:,} parameters train ({precision})")
    if coverage is not None:
        run.say(coverage_text(coverage, family.name))
    return TrainedModel(loaded=loaded, model=model, counts=counts, method=method, precision=precision,
                        lora_coverage=coverage)


def _resumed_targets(run: Run) -> None:
    """A resumed run left to the default LoRA targets adapts what its checkpoint holds: the
    targets its config recorded (a run from before the default was derived from the model
    recorded its family's regex), not the default derived again."""
    lora = run.cfg.lora
    if not (run.resume and lora.enabled and lora.target_modules is None):
        return
    saved = TrainConfigRecord.find(run.ckpt_dir)
    recorded = saved.section("lora").get("target_modules") if saved else None
    if isinstance(recorded, str) or (isinstance(recorded, list) and recorded
                                     and all(isinstance(t, str) for t in recorded)):
        lora.target_modules = recorded


def resume_history(run: Run) -> list[dict[str, Any]]:
    """Earlier resumes of this run, and this one: where and what changed (empty for a fresh start)."""
    saved = TrainConfigRecord.find(run.ckpt_dir) if run.resume else None
    resumed = []
    if saved is not None:
        changed = resume_changes(saved.doc, run.cfg)  # every process refuses before anything is written
        name = run.resume_from.name
        step = int(name.rsplit("-", 1)[-1]) if name.startswith("checkpoint-") else None
        finished = TrainingRecord.find(run.out)  # a finished run trained further
        if finished is not None:
            resumed = list(finished.doc.get("resumed") or [])
        resumed.append({"from_step": step, "changes": changed})
        if changed:
            run.say(f"resuming at step {step} with changed settings: " + "; ".join(changed))
    return resumed


def load_data(run: Run, m: TrainedModel, scorer: Any) -> RunData:
    """The splits, the Trainer's datasets (on cached features with data.feature_cache) and the
    captioner of the validation metrics."""
    cfg, d = run.cfg, run.cfg.data
    family, processor = m.loaded.family, m.loaded.processor
    transform = caption_transform(d.caption_transform)
    train_set, val_set, skipped = _read_splits(run)
    loss_set = val_set[:cfg.eval.loss_samples] if val_set is not None else None
    gen_set = val_set[:cfg.eval.generate_samples] if val_set is not None and cfg.eval.generate_samples else None
    train_cache = val_cache = None
    if d.feature_cache:
        train_cache, val_cache = _feature_caches(run, m, train_set, loss_set)
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
        evaluator = _caption_evaluator(run, m, gen_set, gen_refs, scorer)
    return RunData(train_set=train_set, loss_set=loss_set, gen_set=gen_set, gen_refs=gen_refs, skipped=skipped,
                 train_ds=train_ds, eval_ds=eval_ds, evaluator=evaluator)


def _read_splits(run: Run) -> tuple[CaptionDataset, CaptionDataset | None, list[dict]]:
    """(train split, val split or None, the unreadable images left out)."""
    cfg, d = run.cfg, run.cfg.data
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
            run.say(f"data.skip_bad_images: left out {len(skipped)} unreadable image(s), first: {skipped[0]['file']}: "
                    f"{skipped[0]['reason']} (all listed in metrics.json)")
    return train_set, val_set, skipped


def _feature_caches(run: Run, m: TrainedModel, train_set: CaptionDataset,
                    loss_set: CaptionDataset | None) -> tuple[tdata.FeatureCache, tdata.FeatureCache | None]:
    """data.feature_cache: the frozen vision tower + connector outputs of the training and loss images."""
    cfg, model = run.cfg, m.model
    family, processor = m.loaded.family, m.loaded.processor
    tdata.check_feature_cache(family, model)
    t0 = time.time()
    dev = run.state.device
    if not cfg.quantization.enabled:  # bitsandbytes models already sit where device_map put them
        model.to(dev)
    fill = dict(batch_size=cfg.eval.batch_size, device=dev, dtype=torch.float32)
    train_cache = tdata.compute_feature_cache(model, family, processor, train_set, cfg.data.prompt, **fill)
    val_cache = None
    if loss_set is not None:
        val_cache = tdata.compute_feature_cache(model, family, processor, loss_set, cfg.data.prompt, **fill)
    n = len(train_set) + (len(loss_set) if val_cache is not None else 0)
    mib = (train_cache.nbytes() + (val_cache.nbytes() if val_cache is not None else 0)) / 2 ** 20
    run.say(f"feature cache: {n} images through the frozen vision tower + connector in {time.time() - t0:.1f}s "
            f"({mib:.1f} MiB)")
    return train_cache, val_cache


def _caption_evaluator(run: Run, m: TrainedModel, gen_set: CaptionDataset, gen_refs: CaptionDataset,
                       scorer: Any) -> CaptionEvaluator:
    """Captions ``gen_set`` at each validation and scores them against ``gen_refs``."""
    e = run.cfg.eval
    return CaptionEvaluator(
        gen_set, gen_refs.references_coco(), family=m.loaded.family, processor=m.loaded.processor,
        prompt=run.cfg.data.prompt,
        settings=GenerationSettings(max_new_tokens=e.max_new_tokens, num_beams=e.num_beams),
        metrics=e.metrics, batch_size=e.batch_size,
        scorer_factory=(lambda: scorer) if scorer is not None else None, base_ref=m.loaded.base_ref)


def build_trainer(run: Run, m: TrainedModel, data: RunData, extra_callbacks: list | None) -> CaptionTrainer:
    """Write the config the run starts with into checkpoints/, then set up the Trainer."""
    cfg, ckpt_dir = run.cfg, run.ckpt_dir
    if run.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(ckpt_dir / TRAIN_CONFIG, cfg.to_yaml())
    args = _training_arguments(run, m.precision)
    e, o = cfg.eval, cfg.output
    callbacks = [EpochSync(data.train_ds)] + list(extra_callbacks or [])
    if e.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=e.early_stopping_patience))
    if o.tensorboard:
        tb = TensorBoardCallback()
        tb.logging_dir = str(run.out / LOGS)
        callbacks.append(tb)
    family, processor = m.loaded.family, m.loaded.processor
    return CaptionTrainer(model=m.model, args=args, train_dataset=data.train_ds, eval_dataset=data.eval_ds,
                          data_collator=tdata.Collator(family, processor), processing_class=processor,
                          compute_loss_func=caption_loss(cfg.optim.label_smoothing_factor, shift=family.shifts_labels),
                          callbacks=callbacks,
                          family=family, caption_evaluator=data.evaluator, log_fn=run.say)


def _training_arguments(run: Run, precision: str) -> TrainingArguments:
    """The TrainingArguments of this run; a UserError when the Trainer refuses them."""
    cfg = run.cfg
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
        return TrainingArguments(
            output_dir=str(run.ckpt_dir), **op.trainer_kwargs(), data_seed=op.seed,
            # non-reentrant: with a frozen tower and LoRA the inputs of the first checkpointed block
            # need no grad, and reentrant checkpointing would then drop every gradient
            activation_checkpointing_kwargs={"use_reentrant": False} if op.activation_checkpointing else None,
            per_device_eval_batch_size=e.batch_size,
            logging_strategy="steps", logging_steps=o.logging_steps, logging_first_step=True,
            eval_strategy=eval_strategy, eval_steps=e.every_steps,
            eval_on_start=e.enabled and e.on_start and not run.resume,
            save_strategy=save_strategy, save_steps=save_steps, save_total_limit=o.save_total_limit,
            load_best_model_at_end=load_best, metric_for_best_model=f"eval_{e.metric_for_best}" if load_best else None,
            greater_is_better=e.greater_is_better if load_best else None,
            report_to="none", disable_tqdm=not o.progress, bf16=precision == "bf16", fp16=precision == "fp16",
            remove_unused_columns=False, label_names=["labels"], prediction_loss_only=True,
            dataloader_num_workers=cfg.data.num_workers, use_cpu=run.use_cpu,
            # LoRA parameters are all used in every forward; full fine-tuning keeps DDP's check
            ddp_find_unused_parameters=False if cfg.lora.enabled else None,
        )
    except ValueError as err:
        raise UserError(f"the Trainer rejects these settings: {err}") from err


def fit(trainer: CaptionTrainer, resume_from: Path | None) -> None:
    """trainer.train, its data and checkpoint errors reworded as what to do about them."""
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


def _is_load_error(err: BaseException) -> bool:
    """Whether ``err`` reads as a checkpoint that could not be loaded."""
    text = f"{type(err).__name__} {err}".lower()
    return any(w in text for w in ("checkpoint", "pickle", "zip", "safetensor", "unpickl", "load", "state_dict",
                                   "header", "eof", "corrupt"))


def final_metrics(trainer: CaptionTrainer, e: EvalConfig) -> FinalMetrics:
    """The validation of the model kept: the best checkpoint's with eval.load_best, else the last
    step's (measured now if no validation fell on it)."""
    summary, history = trainer_metrics(trainer.state.log_history)
    final: dict[str, Any] | None = None
    final_step = trainer.state.global_step
    if e.enabled:
        best = trainer.state.best_global_step
        if e.load_best and best and trainer.state.best_model_checkpoint:
            final_step = best
        final = next((h for h in history if h.get("step") == final_step), None)
        if final is None:
            final = {k.replace("eval_", ""): v for k, v in trainer.evaluate().items()}
            final_step = trainer.state.global_step
    return FinalMetrics(summary=summary, history=history, metrics=final, step=final_step)


def save(run: Run, m: TrainedModel, data: RunData, trainer: CaptionTrainer, final: FinalMetrics,
         resumed: list[dict[str, Any]], command: str | None) -> None:
    """Save the model into the staging folder with the config, predictions and record, then move
    them into the output folder (training.outputs.publish)."""
    staging = run.out / STAGING
    if run.is_main and staging.exists():
        shutil.rmtree(staging)
    run.state.wait_for_everyone()
    trainer.save_model(str(staging))
    run.state.wait_for_everyone()
    if run.is_main:
        (staging / "training_args.bin").unlink(missing_ok=True)
        write_atomic(staging / TRAIN_CONFIG, run.cfg.to_yaml())
        preds = data.evaluator.predictions.get(final.step) if data.evaluator is not None else None
        if preds is not None:
            write_json(staging / PREDICTIONS, preds, indent=1)
        publish(staging, run.out, _training_record(run, m, data, trainer, final, resumed, command))
    run.state.wait_for_everyone()


def _training_record(run: Run, m: TrainedModel, data: RunData, trainer: CaptionTrainer, final: FinalMetrics,
                     resumed: list[dict[str, Any]], command: str | None) -> dict[str, Any]:
    """The body of metrics.json (captioning.records.TrainingRecord)."""
    cfg, e, base_ref = run.cfg, run.cfg.eval, m.loaded.base_ref
    metrics_keys = list(e.metrics) + ["loss", "perplexity"]
    val_metrics = {k: final.metrics.get(k) for k in metrics_keys if k in final.metrics} if final.metrics else {}
    failed = (final.metrics or {}).get("caption_error")  # the kept validation could not caption or score
    return {
        "metrics": val_metrics,
        "unavailable": {m: f"validation at step {final.step} failed: {failed}" for m in e.metrics} if failed else {},
        "n_images": data.n_generated,
        "dataset": data.gen_refs.describe() if data.gen_refs is not None else None,
        "loss_dataset": data.loss_set.describe() if data.loss_set is not None else None,
        "train_dataset": data.train_set.describe(),
        "model": {"id": base_ref, "revision": cfg.model.revision, "family": m.loaded.family.name,
                  # what an adapter may later be merged into (release merge checks it)
                  "base_fingerprint": model_fingerprint(base_ref, cfg.model.revision),
                  "adapter": str(run.out) if cfg.lora.enabled else None, "method": m.method,
                  "factory": cfg.to_dict()["model"]["factory"], **m.counts},
        "generation": {"max_new_tokens": e.max_new_tokens, "num_beams": e.num_beams},
        "prompt": cfg.data.prompt,
        "lora_coverage": m.lora_coverage,
        "train": {**final.summary, "global_step": trainer.state.global_step, "epoch": trainer.state.epoch},
        "best": {"metric": e.metric_for_best, "step": final.step,
                 "value": final.metrics.get(e.metric_for_best) if final.metrics else None,
                 "checkpoint": trainer.state.best_model_checkpoint} if e.enabled else None,
        "history": final.history,
        "resumed": resumed,
        "skipped_images": data.skipped,
        "versions": library_versions(),
        "command": command,
        "created": utc_now(),
        "seconds": round(time.time() - run.started, 1),
    }


def report(run: Run, data: RunData, final: FinalMetrics) -> None:
    """The last lines: the validation of the model kept, and how to evaluate it."""
    cfg = run.cfg
    what = "adapter" if cfg.lora.enabled else "model"
    shown = ", ".join(f"{k} {v:.3f}" for k, v in (final.metrics or {}).items()
                      if k in list(cfg.eval.metrics) + ["loss"] and isinstance(v, (int, float)))
    if shown:
        run.say(f"validation ({data.n_generated} images, step {final.step}): {shown}")
    run.say(f"done in {time.time() - run.started:.0f}s: {what} in {run.out}; evaluate it with: python eval/run.py "
            f"generate --model {run.out} --dataset {cfg.data.source} --split test --out {run.out / 'eval-test'}")
