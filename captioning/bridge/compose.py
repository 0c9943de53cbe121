"""Compose a new bridge model from a pretrained vision backbone and a pretrained causal LM.

    python -m captioning.bridge.compose --vision facebook/dinov2-large --text google/gemma-2-2b \\
        --bridge-depth 5 --bridge-hidden-size 1024 --bridge-heads 16 --ffn-mult 0.5 --out models/dinov2-gemma2-bridge
    python -m captioning.bridge.compose --vision facebook/dinov2-small --text HuggingFaceTB/SmolLM2-135M \\
        --out models/dinov2-smollm2-bridge

Writes one self-contained checkpoint (backbone + LM + a fresh zero-gated bridge, the model
code and the processor) that ``training/train.py`` trains with ``model.trust_remote_code:
true`` (see training/recipes/bridge-*.yaml). Until the bridge trains, the model captions
exactly as the bare LM continues the prompt. Not part of the remote code: this module may
import the rest of the toolkit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captioning.errors import UserError


def compose(vision: str, text: str, out: str | Path, *, revision: str | None = None, dtype: str | None = None,
            seed: int = 0, **bridge_kwargs) -> Path:
    """Build and save a bridge over ``vision`` (hub id or folder) and ``text``; returns ``out``.

    ``bridge_kwargs`` are BridgeConfig options (bridge_depth, bridge_attach,
    cross_attention_layers, bridge_hidden_size, bridge_num_heads, bridge_ffn_mult, ...).
    """
    import torch

    from captioning.bridge import BridgeForConditionalGeneration, BridgeProcessor
    from captioning.loading import ensure_hub_reachable, looks_local

    for name, what in ((vision, "vision backbone"), (text, "language model")):
        if looks_local(name):
            if not Path(name).is_dir():
                raise UserError(f"{what} {name}: no such folder")
        else:
            ensure_hub_reachable(name, revision=revision, what=what)
    torch_dtype = {None: None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    torch.manual_seed(seed)  # the bridge's random init
    try:
        model = BridgeForConditionalGeneration.from_vision_text_pretrained(vision, text, dtype=torch_dtype,
                                                                           revision=revision, **bridge_kwargs)
    except ValueError as e:
        raise UserError(f"cannot build a bridge over {vision} + {text}: {e}") from e
    processor = BridgeProcessor.from_vision_text_pretrained(vision, text, revision=revision)
    tok = processor.tokenizer
    if tok.pad_token is None:  # batched generation left-pads; many base LMs ship no pad token
        tok.pad_token = tok.eos_token
    gc = model.generation_config
    gc.eos_token_id = tok.eos_token_id  # training appends this token to every caption
    gc.pad_token_id = tok.pad_token_id
    if tok.bos_token_id is not None:
        gc.bos_token_id = tok.bos_token_id
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m captioning.bridge.compose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vision", required=True, help="vision backbone: DINOv2, SigLIP or CLIP (hub id or folder)")
    p.add_argument("--text", required=True, help="causal language model (hub id or folder)")
    p.add_argument("--out", required=True, help="folder to write the composed model to")
    p.add_argument("--revision", help="hub revision for both")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="storage dtype (default: as published)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bridge's random init")
    p.add_argument("--bridge-depth", type=int, help="cross-attention blocks (default: a quarter of the LM layers)")
    p.add_argument("--bridge-attach", choices=["spread", "first", "last"], default="spread",
                   help="where the blocks go: every k-th layer (spread), or the first/last N layers")
    p.add_argument("--layers", help="explicit LM layer indices, comma separated (overrides depth/attach)")
    p.add_argument("--bridge-hidden-size", type=int, help="attention width inside the bridge (default: LM width)")
    p.add_argument("--bridge-heads", type=int, default=8, help="attention heads per block")
    p.add_argument("--ffn-mult", type=float, default=1.0, help="gated feed-forward width / LM width (0: none)")
    args = p.parse_args(argv)
    try:
        layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    except ValueError:
        print("error: --layers takes comma-separated integers, e.g. 0,6,12", file=sys.stderr)
        return 2
    try:
        out = compose(args.vision, args.text, args.out, revision=args.revision, dtype=args.dtype, seed=args.seed,
                      bridge_depth=args.bridge_depth, bridge_attach=args.bridge_attach,
                      cross_attention_layers=layers, bridge_hidden_size=args.bridge_hidden_size,
                      bridge_num_heads=args.bridge_heads, bridge_ffn_mult=args.ffn_mult)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"saved a bridge over {args.vision} + {args.text} to {out} (load it with trust_remote_code=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
