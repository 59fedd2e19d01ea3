"""megacrystal: Megatron-style 3D-parallel pretraining of Crystal-recipe code+language LLMs."""

__version__ = "0.1.0"
