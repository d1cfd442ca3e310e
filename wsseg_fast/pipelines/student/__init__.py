"""Stage 2: the prompt-free student -- its data, training and prediction.

``train_student(StudentConfig(...)) -> checkpoint path`` and ``predict(checkpoint, images_dir,
out_dir)`` are what ``wsseg-fast train-student`` and ``wsseg-fast predict`` run.
"""

from wsseg_fast.pipelines.student.data import MEAN, STD, StudentDataset
from wsseg_fast.pipelines.student.predict import (
    PredictConfig,
    StudentPredictor,
    load_student,
    predict,
    predict_logits,
    student_engine,
)
from wsseg_fast.pipelines.student.train import (
    StudentConfig,
    balanced_class_weights,
    head_losses,
    train_student,
)

__all__ = [
    "MEAN",
    "STD",
    "PredictConfig",
    "StudentConfig",
    "StudentDataset",
    "StudentPredictor",
    "balanced_class_weights",
    "head_losses",
    "load_student",
    "predict",
    "predict_logits",
    "student_engine",
    "train_student",
]
