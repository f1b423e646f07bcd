"""Allegro (AllegroTransformer3DModel): attn1 is full 3D self-attention over the video tokens
(joint, no text in the sequence), attn2 cross-attention to the text with its padding mask."""

from __future__ import annotations

from .ltx import LTXFamily


class AllegroFamily(LTXFamily):
    name = "allegro"
