"""Set-up shared by every command-line entry point (``attnlens`` and the ``python -m`` tools).

Third-party libraries log about the environment rather than the user's run (transformers: "requires
torchvision ... falling back"; tokenizers' fork warning); entry points keep those at errors before
diffusers is imported. Library code never calls this: it only logs.
"""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    """Errors only from transformers and diffusers, no tokenizers fork warning; explicit settings win."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
