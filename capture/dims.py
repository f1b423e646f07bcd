"""The one place where dimension, coordinate and variable names are defined.

Stores, DataFrames, SQL tables and the dashboard all use these names. Import them; never retype
the strings. This module imports nothing from the project.
"""

# Dimensions.
STEP = "step"  # index of a captured denoising step (0-based, in generation order)
LAYER = "layer"  # index into the run's captured layers
HEAD = "head"
BRANCH = "branch"  # CFG branch: "uncond", "cond" (or "cond" alone without CFG)
PART = "part"  # which block of a row: "all", or for joint layers "spatial", "temporal", "text"
QUERY = "query"  # pooled query cell of a spatial map (row-major over the y x grid)
KEY = "key"  # pooled key cell of a spatial map
QUERY_FRAME = "query_frame"  # query frame of a temporal map
KEY_FRAME = "key_frame"  # key frame of a temporal map
FRAME = "frame"  # latent frame of a per-query entropy map
GRID_Y = "y"
GRID_X = "x"
VIDEO_FRAME = "video_frame"  # decoded output frame
PIXEL_Y = "pixel_y"
PIXEL_X = "pixel_x"
CHANNEL = "channel"

# Coordinates.
TIMESTEP = "timestep"  # the scheduler's timestep value at `step`
LAYER_NAME = "layer_name"  # qualified module name, exactly as in model.named_modules()
LAYER_KIND = "layer_kind"  # spatial | temporal | cross | joint | other
LAYER_BLOCK = "layer_block"  # down.0, mid, up.2, block.7, ...
N_QUERY = "n_query"  # query tokens per attention map
N_KEY = "n_key"  # key tokens per attention map
N_HEADS = "n_heads"

# Scalar statistics, per (step, layer, branch, part, head).
ENTROPY = "entropy"  # mean row entropy, nats
ENTROPY_NORM = "entropy_norm"  # mean of row entropy / ln(allowed keys), in [0, 1]
ENERGY = "energy"  # sum over rows of ||(AV)_r||^2, per video
VALUE_ENERGY = "value_energy"  # sum over key rows of ||V_j||^2, per video
MASS = "mass"  # share of each row's attention mass inside the part (1 for "all")
SCALAR_STATS = (ENTROPY, ENTROPY_NORM, ENERGY, VALUE_ENERGY, MASS)

# Per (step, layer, branch).
PERTURBED = "perturbed"  # 1 where a perturbation replaced this layer's output

# Maps (head-averaged unless heads were asked for).
MAP_SPATIAL = "map_spatial"  # (step, layer, branch, query, key)
MAP_TEMPORAL = "map_temporal"  # (step, layer, branch, query_frame, key_frame)
ENTROPY_MAP = "entropy_map"  # (step, layer, branch, frame, y, x): pooled per-query entropy
VIDEO = "video"  # (video_frame, pixel_y, pixel_x, channel) uint8

KINDS = ("spatial", "temporal", "cross", "joint", "other")  # other: kind not inferable (scalars only)
SELF_KINDS = ("spatial", "temporal", "joint")
PARTS = ("all", "spatial", "temporal", "text")
BRANCHES_CFG = ("uncond", "cond")

# Run status values.
RUNNING = "running"
COMPLETE = "complete"
FAILED = "failed"
