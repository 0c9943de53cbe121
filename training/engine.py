"""The transformers Trainer, extended only where captioning needs it:

* ``compute_loss``: cached image features enter the model as ``mm_encoder_outputs``;
* ``evaluation_loop``: after the val loss, caption the fixed val subset and add CIDEr /
  BLEU-4 / ... and perplexity to the metrics, so best-checkpoint selection, early
  stopping, logging and TensorBoard all see them.

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
            step = self.state.global_step
            scores = self.caption_evaluator.evaluate(self.model, step)
            metrics.update({f"{metric_key_prefix}_{k}": v for k, v in scores.items()})
            if self.is_world_process_zero():
                shown = ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if v is not None)
                self.log_fn(f"[validation @ step {step}] loss {loss:.4f}, {shown}")
                for line in self.caption_evaluator.samples(step):
                    self.log_fn(f"    {printable(line)}")
        return output


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
