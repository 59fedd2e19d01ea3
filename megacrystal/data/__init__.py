"""Data: Megatron indexed files, GPT sample indices, blends, Crystal's phases and FIM, the resumable loader."""
