"""Helpers for model-level tests: a small real tokenizer (BPE with Crystal's specials) and tiny models."""

from __future__ import annotations

from pathlib import Path

import torch

from megacrystal.config import ModelConfig
from megacrystal.model.mup import init_parameters
from megacrystal.model.padding import true_part, true_shape
from megacrystal.model.param_spec import param_spec
from megacrystal.model.transformer import Transformer
from megacrystal.tokenizer import CRYSTAL_SPECIALS

TEXT = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "for i in range(10):\n    print(i * i)\n",
    "Crystal is trained on SlimPajama and StarCoder data in three phases.",
    "import os\nimport sys\n\ndef main():\n    print(os.getcwd())\n",
] * 20


def make_tokenizer(path: Path, vocab: int = 300) -> str:
    """Train a byte-level BPE tokenizer.json with <unk> <s> </s> and the FIM/repo specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>"] + [f"<{s}>" for s in CRYSTAL_SPECIALS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXT, trainer)
    tok.save(str(path))
    return str(path)


def tiny_model(seed: int = 0, **overrides) -> tuple[ModelConfig, Transformer]:
    args = dict(preset="tiny", num_layers=2, vocab_size=1000)
    args.update(overrides)
    cfg = ModelConfig(**args).resolve()
    model = Transformer(cfg)
    init_parameters(model, cfg, seed=seed)
    with torch.no_grad():  # make norms/biases non-trivial so a layout mix-up cannot hide; padding stays 0
        g = torch.Generator().manual_seed(seed + 1)
        for _name, p in model.named_parameters():
            if param_spec(p).init in ("ones", "zeros"):
                true_part(p, true_shape(p)).add_(0.1 * torch.randn(true_shape(p), generator=g))
    return cfg, model.eval()
