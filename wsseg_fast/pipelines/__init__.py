"""End-to-end jobs built from the ops: pseudo-labelling, CAM refinement,
fine-tuning, student training and evaluation."""
