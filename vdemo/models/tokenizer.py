"""A word-level tokenizer for the built-in model, built from the synthetic world's vocabulary.

Saved and loaded as a standard `tokenizer.json` (Hugging Face `tokenizers` WordLevel model wrapped in
`PreTrainedTokenizerFast`), so it ships in `assets/` next to the weights. Words outside the vocabulary become `[UNK]`;
prompts are lower-cased and split on whitespace and punctuation (hyphenated words stay whole), so any string
tokenises without error.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
SEPARATORS = r"[\s,.;:!?()\"']+"  # split on spaces and punctuation, but keep hyphenated words ("up-left") whole


def build_tokenizer(words: list[str], max_tokens: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: [PAD]=0, [UNK]=1, [CLS]=2, then the words in the given order."""
    vocab = {PAD: 0, UNK: 1, CLS: 2}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    core = Tokenizer(WordLevel(vocab, unk_token=UNK))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Split(Regex(SEPARATORS), behavior="removed")
    core.post_processor = processors.TemplateProcessing(single=f"{CLS} $A", special_tokens=[(CLS, 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, unk_token=UNK, cls_token=CLS, model_max_length=max_tokens
    )


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with `save_pretrained` from a local folder (never the hub)."""
    return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def encode_prompts(tokenizer: PreTrainedTokenizerFast, prompts: list[str], max_tokens: int) -> torch.Tensor:
    """Token ids (B, max_tokens), padded and truncated; an empty prompt is just [CLS]."""
    out = tokenizer(prompts, padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt")
    return out["input_ids"]
