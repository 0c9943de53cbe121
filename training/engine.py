"""The transformers Trainer, extended only where captioning needs it:

* ``compute_loss``: cached image features enter the model as ``mm_encoder_outputs``;
* ``evaluation_loop``: after the val loss, caption the fixed val subset and add CIDEr /
  BLEU-4 / ... and perplexity to the metrics, so best-checkpoint selection, early
  stopping, logging and TensorBoard all see them. A validation never ends the run: an empty
  caption scores as matching nothing (``empty_captions``: how many), and a failure of
  captioning or scoring is one log line (``caption_error``), the caption metrics of that
  step missing;
* ``_determine_best_metric``: a validation without the metric the best checkpoint is chosen
  by is not the best.

Everything else (accumulation, mixed precision, schedules, clipping, checkpoints and
rotation, resume, logging, multi-process) is the stock Trainer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from captioning.cli import printable
from captioning.families.base import IGNORE_INDEX
from training.data import features_to_model_inputs
from training.evaluation import CaptionEvaluator, perplexity


def caption_loss(label_smoothing: float = 0.0, *, shift: bool = True):
    """Next-token cross-entropy over the caption tokens (labels -100 elsewhere), with
    optional label smoothing, normalised by the supervised-token count of the whole
    accumulated batch when the Trainer passes it (so accumulation does not change the loss).

    One function for every family: the models' own losses differ (BLIP's decoder smooths
    labels by 0.1 internally), so the loss is computed here from the logits. ``shift``: the
    logits at t predict the label at t+1 (decoder-only models); encoder-decoders predict the
    label at t (``Family.shifts_labels``).
    """

    def loss_fn(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if shift:
            logits, labels = logits[:, :-1, :], labels[:, 1:]
        logits = logits.float()
        target = labels.to(logits.device)
        total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing)
        if num_items_in_batch is None:
            num_items_in_batch = (target != IGNORE_INDEX).sum()
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    return loss_fn


class CaptionTrainer(Trainer):
    """Trainer + cached image features + captioning metrics at each validation."""

    def __init__(self, *args, family=None, caption_evaluator: CaptionEvaluator | None = None, log_fn=print,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.family = family  # turns cached image features into the forward's arguments
        self.caption_evaluator = caption_evaluator
        self.log_fn = log_fn

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, features_to_model_inputs(dict(inputs), self.family),
                                    return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                         ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        metrics = output.metrics
        loss = metrics.get(f"{metric_key_prefix}_loss")
        if loss is not None:
            metrics[f"{metric_key_prefix}_perplexity"] = perplexity(loss)
        if self.caption_evaluator is not None and metric_key_prefix == "eval":
            self._caption_metrics(metrics, loss, metric_key_prefix)
        return output

    def _caption_metrics(self, metrics: dict[str, Any], loss: float | None, prefix: str) -> None:
        """Caption the val subset, add its scores (or why there are none) to ``metrics``, log it."""
        step = self.state.global_step
        ev = self.caption_evaluator
        v = ev.evaluate(self.model, step)
        metrics.update({f"{prefix}_{k}": s for k, s in v.scores.items()})
        if v.error is None:
            metrics[f"{prefix}_empty_captions"] = len(v.empty)
        else:
            metrics[f"{prefix}_caption_error"] = v.error
        if not self.is_world_process_zero():
            return
        head = f"[validation @ step {step}] loss {loss:.4f}" if loss is not None else f"[validation @ step {step}]"
        if v.error is not None:
            self.log_fn(printable(f"{head}; no caption metrics at this step, captioning or scoring failed: "
                                  f"{v.error} (the run goes on)"))
            return
        shown = "".join(f", {k} {s:.3f}" for k, s in v.scores.items() if s is not None)
        if v.empty:
            names = ev.names(v.empty)
            listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            shown += (f"; {len(v.empty)} of {len(ev.ids)} captions empty (the model stopped at once; each "
                      f"scores as matching nothing): {listed}")
        self.log_fn(printable(head + shown))
        for line in ev.samples(step):
            self.log_fn(f"    {printable(line)}")

    def _determine_best_metric(self, metrics: dict[str, Any], trial) -> bool:
        """The Trainer's choice, except that a validation whose caption metrics are missing
        (captioning or scoring failed) is never the best: the stock Trainer raises there."""
        name = self.args.metric_for_best_model
        if name is not None and metrics.get(name if name.startswith("eval_") else f"eval_{name}") is None:
            return False
        return super()._determine_best_metric(metrics=metrics, trial=trial)


class EpochSync(TrainerCallback):
    """Tell the dataset which epoch starts, also when a run resumes mid-epoch.

    The Trainer calls ``set_epoch`` on its data loader, but on resume it first swaps in a
    loader that skips the trained batches, and that one does not pass the epoch on: the
    resumed epoch would draw epoch 0's reference captions.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(math.floor((state.epoch or 0) + 1e-6))


def trainer_metrics(log_history: list[dict[str, Any]]) -> tuple[dict, list[dict]]:
    """(final train summary, validation history) from the Trainer's log history."""
    summary = {}
    evals = []
    for entry in log_history:
        if "train_runtime" in entry:
            summary = {k.replace("train_", ""): v for k, v in entry.items()}
        elif any(k.startswith("eval_") for k in entry):
            evals.append({k.replace("eval_", ""): v for k, v in entry.items()})
    return summary, evals
