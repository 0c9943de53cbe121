"""COCO caption metrics: the one implementation the toolkit uses.

    from eval.scoring import score, Scorer
    result = score(references, predictions)          # one-off: starts and stops its JVM
    with Scorer() as scorer:                         # repeated scoring (training validation):
        for preds in each_validation_round:          # keeps the METEOR JVM warm
            result = scorer.score(references, preds)

Numbers are exactly what pycocoevalcap's COCOEvalCap computes (0-1 scale): the same PTB
tokenizer, the same BLEU arithmetic, the same METEOR jar, and ROUGE-L / CIDEr-D
re-implemented with the same floating-point operations in the same order (checked bit for
bit in tests/test_scoring.py). What differs is only how the work is done:

* METEOR's JVM starts first (loading its paraphrase table is the floor of a fresh run) and
  stays warm inside a :class:`Scorer` across calls.
* References and predictions go through ONE PTBTokenizer JVM (``-ioFileList``: one lexer
  per file, so the output equals two separate COCOEvalCap calls).
* METEOR requests are pipelined, not one round trip per image (see :mod:`.meteor`), while
  BLEU, ROUGE-L, CIDEr-D and sacreBLEU run in this process.
* Python's cyclic garbage collector is paused while scoring: the n-gram tables it would
  walk again and again hold no cycles.
* A warm Scorer keeps what depends only on the references (PTB tokens, cooked BLEU /
  CIDEr-D / sacreBLEU statistics) while they stay the same, as in training validation.

SPICE is attempted only where it can run (Stanford CoreNLP 3.6.0 jars present and Java 8);
otherwise ``metrics["SPICE"]`` is None and ``unavailable["SPICE"]`` says why.

Modules: :mod:`.inputs` (files, validation, metric selection), :mod:`.java` (Java, jars, SPICE),
:mod:`.ptb` (tokenizer), :mod:`.meteor` (METEOR processes), :mod:`.ngram` (BLEU, ROUGE-L,
CIDEr-D, sacreBLEU), :mod:`.scorer` (:class:`Scorer`, :func:`score`, :func:`format_table`).
"""

from __future__ import annotations

from captioning.errors import UserError
from captioning.files import MAX_JSON_BYTES
from captioning.vocabulary import BLEU_NAMES, COCO_METRICS
from eval.scoring.inputs import EMPTY_STANDIN, MAX_CAPTION_CHARS, SACREBLEU_KEY, load_json
from eval.scoring.java import JAVA_INSTALL_HINT, java, spice_unavailable_reason
from eval.scoring.scorer import Scorer, format_table, score

__all__ = [
    "BLEU_NAMES", "EMPTY_STANDIN", "JAVA_INSTALL_HINT", "MAX_CAPTION_CHARS", "MAX_JSON_BYTES", "METRICS",
    "SACREBLEU_KEY", "Scorer", "UserError", "format_table", "java", "load_json", "score",
    "spice_unavailable_reason",
]

METRICS = COCO_METRICS  # this package's name for them (declared in captioning.vocabulary)
_java = java  # the name eval.provenance and tests/test_eval_run.py use
