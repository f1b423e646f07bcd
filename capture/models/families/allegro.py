"""Allegro (AllegroTransformer3DModel): attn1 is full 3D self-attention over the video tokens
(joint, no text in the sequence), attn2 cross-attention to the text with its padding mask. Its VAE
decodes one video at a time, so a batched call is decoded per video by the tracer."""

from __future__ import annotations

from .ltx import LTXFamily


class AllegroFamily(LTXFamily):
    name = "allegro"
    decode_per_video = True  # AllegroPipeline's tiled VAE decode handles one video

    def decode_video(self, pipe, latents, record):
        video = pipe.decode_latents(latents.to(pipe.vae.dtype))  # as AllegroPipeline decodes
        return video[:, :, : record.get("num_frames") or None, : record.get("height") or None,
                     : record.get("width") or None]
