"""Run code snippets under whatever transformers is importable (the release tests use it with
PYTHONPATH pointing at a transformers 4.57 side install). Reads a JSON list of jobs on stdin:
{"name", "code", "patch_idefics3_positions": bool}; prints one JSON line {name: {"ok", "output",
"error"}}. Snippets print their caption; the output is what they printed."""

import contextlib
import io
import json
import sys
import traceback


def patch_idefics3_positions():
    """transformers 4.x computes Idefics3 vision position ids with an off-by-one in float32
    (huggingface/transformers#47133); this is the intended (transformers 5) computation."""
    import torch
    from transformers.models.idefics3 import modeling_idefics3 as mi

    def forward(self, pixel_values, patch_attention_mask):
        bs, _, h, w = pixel_values.shape
        emb = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        n = self.num_patches_per_side
        pos = torch.zeros(bs, (h // self.patch_size) * (w // self.patch_size), dtype=torch.long, device=emb.device)
        for b, m in enumerate(patch_attention_mask):
            nh, nw = int(m[:, 0].sum()), int(m[0].sum())
            rows = torch.arange(nh, device=emb.device) * n // nh
            cols = torch.arange(nw, device=emb.device) * n // nw
            pos[b][m.view(-1)] = (rows[:, None] * n + cols).flatten()
        return emb + self.position_embedding(pos)

    original = mi.Idefics3VisionEmbeddings.forward
    mi.Idefics3VisionEmbeddings.forward = forward
    return lambda: setattr(mi.Idefics3VisionEmbeddings, "forward", original)


def main():
    import transformers

    jobs = json.loads(sys.stdin.read())
    results = {"_transformers": transformers.__version__}
    for job in jobs:
        undo = patch_idefics3_positions() if job.get("patch_idefics3_positions") else None
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                exec(compile(job["code"], job["name"], "exec"), {"__name__": "__snippet__"})
            results[job["name"]] = {"ok": True, "output": buf.getvalue(), "error": None}
        except Exception as e:
            results[job["name"]] = {"ok": False, "output": buf.getvalue(),
                                    "error": f"{type(e).__name__}: {e}".splitlines()[0][:500],
                                    "traceback": traceback.format_exc()[-2000:]}
        finally:
            if undo:
                undo()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
