#!/usr/bin/env python3
"""A randomly initialised ~1.2 B Llama-architecture model with grouped-query attention, in
float16, for the GPU benchmark (issue 17): Llama 3.2 1B's shapes (hidden 2048, 16 layers,
32 query heads over 8 KV heads, intermediate 8192, tied embeddings) with the kit's Phi-2
tokenizer (vocab 51200). Its text is noise; its cost per token is a real 1B model's.

    python3 make_llama.py TARGET_DIR [--tokenizer-dir /root/stage/tokenizer]
"""

from __future__ import annotations

import argparse
import inspect
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("target")
    p.add_argument("--tokenizer-dir", default="/root/stage/tokenizer")
    a = p.parse_args()
    kw: dict[str, object] = dict(
        vocab_size=51200,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=True,
        bos_token_id=50256,
        eos_token_id=50256,
        architectures=["LlamaForCausalLM"],
    )
    params = inspect.signature(LlamaConfig.__init__).parameters
    kw["dtype" if "dtype" in params else "torch_dtype"] = "float16"
    config = LlamaConfig(**kw)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.float16)
    n = sum(t.numel() for t in model.parameters())
    model.save_pretrained(a.target, max_shard_size="2GB")
    for f in Path(a.tokenizer_dir).iterdir():
        if f.is_file():
            shutil.copy(f, Path(a.target) / f.name)
    print(f"{a.target}: LlamaForCausalLM, {n / 1e9:.2f} B parameters, fp16, GQA 32/8")


if __name__ == "__main__":
    main()
