"""The commands' option choices now live in latentae.options; models/tiling.py still imports them from here."""
from latentae.options import *  # noqa: F401,F403
from latentae.options import TILE_ABOVE_PIXELS, TILING  # noqa: F401
