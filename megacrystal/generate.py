"""`megacrystal generate`: sample text from a run, checkpoint or model directory, or an HF directory.

    megacrystal generate (--checkpoint DIR | --hf DIR) --prompt TEXT [--max-new-tokens N] [--greedy]
                         [--fim PREFIX SUFFIX] [--temperature T] [--top-k K] [--seed S] [--device D]

Decoding runs through a KV cache (model/incremental.py): each step feeds only the new token; a
sequence longer than max_seq_len continues on its last max_seq_len tokens (re-run whole). `--fim PREFIX SUFFIX` (instead of --prompt) builds Crystal's PSM prompt
`<fim_prefix> prefix <fim_suffix> suffix <fim_middle>` and generates the middle. Generation stops at the
end-of-document token (and, for FIM, at any FIM special token).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from .log import get_logger
from .model.incremental import IncrementalLogits


def load_for_generation(
    checkpoint: str | None = None, hf: str | None = None, device: str = "cpu", dtype: torch.dtype | None = None
):
    """-> (model in eval mode, its ModelConfig, tokenizer or None)."""
    from .checkpoint import checkpoint_tokenizer, load_model_state
    from .model.serialization import build_model
    from .tokenizer import load_tokenizer

    if (checkpoint is None) == (hf is None):
        raise ValueError("give exactly one of --checkpoint DIR or --hf DIR")
    if checkpoint is not None:
        cfg, sd = load_model_state(checkpoint)
        tok_path = checkpoint_tokenizer(checkpoint)
    else:
        from .hf.convert import hf_to_model

        cfg, sd, tok_path = hf_to_model(hf)
    model = build_model(cfg, sd, device=device, dtype=dtype)
    tok = load_tokenizer(None, tok_path) if tok_path else None
    return model, cfg, tok


def fim_prompt(tok, prefix: str, suffix: str) -> list[int]:
    """PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle>."""
    missing = [n for n in ("fim_prefix", "fim_suffix", "fim_middle") if n not in tok.special]
    if missing:
        raise ValueError(
            f"{tok.path}: the tokenizer has no {', '.join('<' + m + '>' for m in missing)} token (needed for --fim)"
        )
    sp = tok.special
    return [sp["fim_prefix"], *tok.encode(prefix), sp["fim_suffix"], *tok.encode(suffix), sp["fim_middle"]]


@torch.no_grad()
def generate_ids(
    model,
    prompt: Sequence[int],
    max_new_tokens: int,
    greedy: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    stop_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
    cache: bool = True,
) -> list[int]:
    """New token ids after `prompt` (the stop token, if reached, is not included); `cache=False` runs the
    whole window at every step (the reference the KV cache is tested against)."""
    if not prompt:
        raise ValueError("generate: the prompt is empty (nothing to condition on)")
    cfg = model.cfg
    device = next(model.parameters()).device
    ids = list(prompt)
    new: list[int] = []
    stops = set(stop_ids)
    step = IncrementalLogits(model) if cache else None
    for _ in range(max_new_tokens):
        window = ids[-cfg.max_seq_len :]
        if step is not None:
            logits = step([window])[0]
        else:
            logits = model(torch.tensor([window], device=device))[0, -1, : cfg.vocab_size].float()
        if greedy:
            nxt = int(logits.argmax())
        else:
            logits = logits / max(temperature, 1e-6)
            if top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1).cpu()
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        if nxt in stops:
            break
        ids.append(nxt)
        new.append(nxt)
    return new


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal generate", description=__doc__.split("\n")[0].split(": ", 1)[1])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="run, checkpoint or model directory")
    src.add_argument("--hf", help="HF directory (crystalcoder or llama layout)")
    ap.add_argument("--prompt", help="text to continue")
    ap.add_argument("--fim", nargs=2, metavar=("PREFIX", "SUFFIX"), help="fill in the middle between PREFIX and SUFFIX")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    ap.add_argument("--greedy", action="store_true", help="argmax decoding (default: sampling)")
    ap.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    ap.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (default 50)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if available")
    a = ap.parse_args(argv)
    if (a.prompt is None) == (a.fim is None):
        print("megacrystal generate: give --prompt TEXT or --fim PREFIX SUFFIX (one of them)", file=sys.stderr)
        return 2
    if a.max_new_tokens < 1:
        print(f"megacrystal generate: --max-new-tokens must be >= 1, got {a.max_new_tokens}", file=sys.stderr)
        return 2
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    try:
        model, cfg, tok = load_for_generation(
            a.checkpoint, a.hf, device=device, dtype=torch.bfloat16 if device == "cuda" else None
        )
        if tok is None:
            raise ValueError(f"{a.checkpoint or a.hf}: no tokenizer.json or tokenizer.model next to the model")
        prompt = fim_prompt(tok, *a.fim) if a.fim else tok.encode(a.prompt)
    except ValueError as e:  # ModelFormatError, HFError, ConfigError are ValueErrors
        print(f"megacrystal generate: {e}", file=sys.stderr)
        return 1
    stops = [tok.eod] + ([v for k, v in tok.special.items() if k.startswith("fim_")] if a.fim else [])
    gen = torch.Generator().manual_seed(a.seed)
    new = generate_ids(model, prompt, a.max_new_tokens, a.greedy, a.temperature, a.top_k, stops, gen)
    get_logger().info(f"generated {len(new)} tokens from a {len(prompt)}-token prompt")
    if a.fim:
        print(a.fim[0] + tok.decode(new) + a.fim[1])
    else:
        print(tok.decode(tok.encode(a.prompt) + new))
    return 0
