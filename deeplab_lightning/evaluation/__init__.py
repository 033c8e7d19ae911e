"""Evaluation: the pipeline that runs the network on evaluation batches (scales, flips, windows, canvas, dense
CRF), the evaluator that turns its scores into metrics over whole splits (confusion matrix; trimap, Boundary IoU
and boundary F1), and the dense CRF (fixed, and trainable as CRF-as-RNN)."""
from ..data.dataset import smallest_eval_size
from .boundaries import BoundaryMetrics, BoundaryResults, BoundarySettings
from .crf import CRFSettings, dense_crf
from .evaluator import EvaluationResults, Evaluator
from .metrics import SegmentationMetrics
from .multiscale import msc_max_fusion, predict_multiscale, sliding_window
from .pipeline import BatchScores, EvaluationPipeline, Inference

__all__ = ["BatchScores", "BoundaryMetrics", "BoundaryResults", "BoundarySettings", "CRFSettings",
           "EvaluationPipeline", "EvaluationResults", "Evaluator", "Inference", "SegmentationMetrics", "dense_crf",
           "msc_max_fusion", "predict_multiscale", "sliding_window", "smallest_eval_size"]
