"""A byte-level CLIP tokenizer built in code, so tiny models need no download.

The vocabulary is every byte (GPT-2's byte-to-unicode table), each also as an end-of-word token,
plus CLIP's two special tokens; there are no merges, so every word tokenizes to its characters.
"""

from __future__ import annotations

from functools import lru_cache

from transformers import CLIPTokenizer

VOCAB_SIZE = 2 * 256 + 2


@lru_cache(maxsize=1)
def _byte_chars() -> tuple[str, ...]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return tuple(chars[b] for b in range(256))


def byte_vocab() -> dict[str, int]:
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    return vocab


def byte_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    return CLIPTokenizer(vocab=byte_vocab(), merges=[], model_max_length=model_max_length)


def word_clip_tokenizer(words, model_max_length: int = 32) -> CLIPTokenizer:
    """A CLIP tokenizer whose given words are single tokens (bytes remain as a fallback).

    Each word's merges join its characters from the end (``e d</w>`` → ``ed</w>``, ``r ed</w>`` →
    ``red</w>``); every merge's right side ends a word, so merges never cross words and any listed
    word tokenizes to exactly one id. Ids 0–513 are those of the byte tokenizer.
    """
    vocab = byte_vocab()
    merges: list[tuple[str, str]] = []
    for word in sorted(set(words)):
        if not word.isascii() or not word.isalpha() or word != word.lower():
            raise ValueError(f"vocabulary words must be lower-case ASCII letters, not {word!r}")
        suffix = word[-1] + "</w>"
        for ch in reversed(word[:-1]):
            merged = ch + suffix
            if (ch, suffix) not in merges:
                merges.append((ch, suffix))
            vocab.setdefault(merged, len(vocab))
            suffix = merged
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
