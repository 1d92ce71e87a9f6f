"""Image-text retrieval under adversarial (Wasserstein, UOT, l_p) image attacks.

* :mod:`.losses`: CMPM and CMPC (Zhang & Lu 2018), formulas in the docstrings.
* :mod:`.metrics`: R@K both ways with label matching and pessimistic ties.
* :mod:`.datasets`: Flickr8k (original files or the shared npz), CUHK-PEDES, COCO-MINI, generic captions files.
* :mod:`.encoders` / :mod:`.model`: frozen backbones (EfficientNet-Lite0, MiniLM; user hooks) + 512-d heads.
* :mod:`.train`: CMPM+CMPC training of the heads on cached features.
* :mod:`.attack`: per-image retrieval objectives for any attack of the library and the gallery attack loop.
* :mod:`.experiment`: the train / evaluate / attack pipeline behind ``sinkhorn-attacks retrieval``.

Heavy backbones live in the optional extra ``pip install 'sinkhorn-attacks[retrieval]'`` and are imported
lazily.
"""

from ..data.captions import (
    RetrievalData,
    load_captions_file,
    load_coco_mini_npz,
    load_cuhk_pedes,
    load_flickr8k,
    load_flickr8k_npz,
    make_synthetic,
    seeded_split,
)
from .attack import OBJECTIVES, GalleryAttackResult, RetrievalObjective, attack_gallery, embed_images
from .encoders import (
    CallableTextBackbone,
    EfficientNetLite0Backbone,
    HashingTextBackbone,
    ImageBackbone,
    MiniLMTextBackbone,
    OptionalDependencyError,
    SmallCNNBackbone,
    TextBackbone,
    WrappedImageBackbone,
    make_image_backbone,
    make_text_backbone,
)
from .losses import CMPCClassifier, cmpc_loss, cmpc_terms, cmpm_cmpc_loss, cmpm_loss, cmpm_terms, match_mask
from .metrics import cosine_scores, pessimistic_ranks, recall_from_ranks, retrieval_metrics, retrieval_ranks
from .model import DualEncoder, DualEncoderProtocol, ImageTower, ProjectionHeads, load_heads, save_heads
from .train import TrainConfig, embed_features, train_heads

__all__ = [
    "OBJECTIVES",
    "GalleryAttackResult",
    "RetrievalObjective",
    "attack_gallery",
    "embed_images",
    "RetrievalData",
    "load_captions_file",
    "load_coco_mini_npz",
    "load_cuhk_pedes",
    "load_flickr8k",
    "load_flickr8k_npz",
    "make_synthetic",
    "seeded_split",
    "CallableTextBackbone",
    "EfficientNetLite0Backbone",
    "HashingTextBackbone",
    "ImageBackbone",
    "MiniLMTextBackbone",
    "OptionalDependencyError",
    "SmallCNNBackbone",
    "TextBackbone",
    "WrappedImageBackbone",
    "make_image_backbone",
    "make_text_backbone",
    "CMPCClassifier",
    "cmpc_loss",
    "cmpc_terms",
    "cmpm_cmpc_loss",
    "cmpm_loss",
    "cmpm_terms",
    "match_mask",
    "cosine_scores",
    "pessimistic_ranks",
    "recall_from_ranks",
    "retrieval_metrics",
    "retrieval_ranks",
    "DualEncoder",
    "DualEncoderProtocol",
    "ImageTower",
    "ProjectionHeads",
    "load_heads",
    "save_heads",
    "TrainConfig",
    "embed_features",
    "train_heads",
]
