"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE) as an `evaluate` metric.

    import evaluate
    coco = evaluate.load("eval/coco_caption")       # a local path: loads offline
    coco.compute(predictions=["a dog runs"], references=[["a dog is running", "a dog"]])

A thin adapter over `eval.scoring.score` (the toolkit's one implementation, equal to
pycocoevalcap's COCOEvalCap): the lists become COCO dicts with image ids 0..n-1 and the same
numbers come back, flattened. `evaluate` copies this file into its module cache, so the
toolkit is found through the original path evaluate records next to the copy (or the
current directory / an importable `eval` package).
"""


import datasets
import evaluate

_DESCRIPTION = """COCO caption metrics exactly as pycocoevalcap's COCOEvalCap computes them (0-1
scale; CIDEr-D on its usual 0-10 scale): PTB-tokenized BLEU-1..4, METEOR 1.5, ROUGE-L and
CIDEr-D. SPICE is reported as None with a reason when it cannot run. CIDEr-D takes its idf
from the evaluated set, so always report n_images with the numbers."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str, one generated caption per image.
    references: list of lists of str, the reference captions of each image.
    tokenize: bool (default True): PTB-tokenize as COCOEvalCap does; False scores strings as given.
    metrics: optional list of metric names (Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE, or Bleu).
    per_image: bool (default False): also return {"per_image": {index: {metric: value}}}.
    scorer: optional eval.scoring.Scorer to reuse warm METEOR JVMs across calls.
Returns:
    Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE (float or None), n_images, unavailable
    ({metric: reason}), sacreBLEU_corpus_0_100 (sacrebleu corpus BLEU on untokenized text).
Examples:
    >>> coco = evaluate.load("eval/coco_caption")
    >>> out = coco.compute(predictions=["a dog runs on grass"],
    ...                    references=[["a dog running on the grass", "a brown dog runs"]])
    >>> sorted(out)[:3]
    ['Bleu_1', 'Bleu_2', 'Bleu_3']
"""

_CITATION = """@inproceedings{lin2014microsoft, title={Microsoft COCO: Common Objects in Context},
author={Lin, Tsung-Yi and others}, booktitle={ECCV}, year={2014}}
@article{chen2015microsoft, title={Microsoft COCO Captions: Data Collection and Evaluation
Server}, author={Chen, Xinlei and others}, journal={arXiv:1504.00325}, year={2015}}"""


def _scoring():
    """The toolkit's eval.scoring module (the toolkit installed with ``pip install -e``)."""
    try:
        from eval import scoring
    except ImportError as e:
        raise ImportError("coco_caption needs the captioning toolkit: install its checkout with "
                          "`pip install -e PATH/TO/CHECKOUT`") from e
    return scoring


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CocoCaption(evaluate.Metric):
    """COCO caption metrics; equal to eval.scoring.score on the same captions."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
            reference_urls=["https://github.com/salaniz/pycocoevalcap"],
        )

    def _compute(self, predictions, references, tokenize=True, metrics=None, per_image=False,
                 scorer=None):
        scoring = _scoring()
        if len(predictions) != len(references):
            raise scoring.UserError(f"{len(predictions)} predictions but {len(references)} "
                                    "reference lists: give one list of references per prediction")
        refs = {"images": [{"id": i} for i in range(len(references))], "annotations": []}
        for i, captions in enumerate(references):
            for caption in captions:
                refs["annotations"].append({"image_id": i, "id": len(refs["annotations"]),
                                            "caption": caption})
        preds = [{"image_id": i, "caption": c} for i, c in enumerate(predictions)]
        result = scoring.score(refs, preds, tokenize=tokenize, metrics=metrics, scorer=scorer)
        out = dict(result["metrics"])
        out["n_images"] = result["n_images"]
        out["unavailable"] = result["unavailable"]
        out.update(result["extras"])
        if per_image:
            out["per_image"] = result["per_image"]
        return out
