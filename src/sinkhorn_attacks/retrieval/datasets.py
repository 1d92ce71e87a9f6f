"""Compatibility module: the image-caption datasets live in :mod:`sinkhorn_attacks.data.captions`."""

from ..data.captions import *  # noqa: F403
from ..data.captions import (  # noqa: F401
    _SPLIT_ALIASES,
    __all__,
    _image_matched,
    _norm_split,
    _pil,
    _require_file,
)
