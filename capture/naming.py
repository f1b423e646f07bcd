"""Display names for the model's own qualified layer names (torch-free)."""


def short_name(name: str) -> str:
    """A compact label for a qualified module name, for axes (hover text keeps the full name)."""
    return (name.replace("down_blocks.", "d").replace("up_blocks.", "u").replace("mid_block.", "mid.")
            .replace("attentions.", "a").replace("motion_modules.", "m")
            .replace("temporal_transformer_blocks.", "tt").replace("transformer_blocks.", "t"))
