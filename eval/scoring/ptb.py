"""PTB tokenization as pycocoevalcap's PTBTokenizer does it, references and predictions in one JVM."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from eval.scoring.inputs import LINE_BREAKS
from eval.scoring.java import java, package_dir


def ptb_tokenize(groups: list[dict]) -> list[dict]:
    """Tokenize several ``{image_id: [caption, ...]}`` dicts in ONE PTBTokenizer JVM.

    Equals ``PTBTokenizer().tokenize`` on each dict: ``-ioFileList`` runs a fresh lexer per
    input file, so no context leaks between references and predictions, and the per-line
    post-processing (lower-cased tokens minus pycocoevalcap's PUNCTUATIONS) is the same code.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    java_path, _, _ = java()
    jar = package_dir() / "tokenizer" / STANFORD_CORENLP_3_4_1_JAR
    punct = set(PUNCTUATIONS)
    with tempfile.TemporaryDirectory(prefix="coco-ptb-") as tmp:
        listing, layouts = [], []
        for g, group in enumerate(groups):
            image_id = [k for k, v in group.items() for _ in range(len(v))]
            sentences = "\n".join(LINE_BREAKS.sub(" ", c) for v in group.values() for c in v)
            Path(tmp, f"in{g}.txt").write_bytes(sentences.encode())
            listing.append(f"in{g}.txt\tout{g}.txt")
            layouts.append(image_id)
        Path(tmp, "files.txt").write_text("\n".join(listing) + "\n")
        proc = subprocess.run(
            [java_path, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", "-ioFileList", "files.txt"],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"PTBTokenizer failed (exit {proc.returncode}): {' | '.join(tail)}")
        out = []
        for g, image_id in enumerate(layouts):
            lines = Path(tmp, f"out{g}.txt").read_bytes().decode().split("\n")
            if len(lines) < len(image_id):
                raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for "
                                   f"{len(image_id)} captions")
            tokenized: dict = {}
            for k, line in zip(image_id, lines):
                tokenized.setdefault(k, []).append(
                    " ".join([w for w in line.rstrip().split(" ") if w not in punct]))
            out.append(tokenized)
    return out
