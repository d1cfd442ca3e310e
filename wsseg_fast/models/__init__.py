"""Networks: prompt-free student segmenters (and, later, CAM heads and the query prompter)."""

from wsseg_fast.models.student import MultiHeadUNet, UNet, build_student

__all__ = ["MultiHeadUNet", "UNet", "build_student"]
