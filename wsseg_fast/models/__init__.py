"""Networks: prompt-free student segmenters (U-Nets on pixels, a decoder on cached SAM features)."""

from wsseg_fast.models.sam_head import SamFeatureHead
from wsseg_fast.models.student import MultiHeadUNet, UNet, build_student

__all__ = ["MultiHeadUNet", "SamFeatureHead", "UNet", "build_student"]
