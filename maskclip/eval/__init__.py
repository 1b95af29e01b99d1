"""Evaluation: zero-shot classification, image-text retrieval, linear probe, zero-shot segmentation
(synthetic data or the eight benchmarks under their protocol), linear segmentation probe.

Each task takes a model (any ``maskclip.load`` result; only its public API is used) and data
(an ``EvalSet`` or a spec such as ``"synthetic:test"``, a folder, a CSV or shards; see
``maskclip.eval.datasets``) and returns a JSON-able dict of results, its protocol included.

>>> from maskclip.eval import zero_shot_classification
>>> zero_shot_classification(model, "synthetic:test,n=500")["top1"]
"""
from .datasets import EvalSet, Record, open_dataset
from .linear_probe import linear_probe_classification
from .results import to_json, write_results
from .retrieval import image_text_retrieval
from .segmentation import zero_shot_segmentation
from .segmentation_benchmark import all_benchmarks, benchmark_segmentation
from .segmentation_probe import segmentation_probe
from .zero_shot import zero_shot_classification

__all__ = ["zero_shot_classification", "image_text_retrieval", "linear_probe_classification",
           "zero_shot_segmentation", "benchmark_segmentation", "all_benchmarks", "segmentation_probe",
           "open_dataset", "EvalSet", "Record", "write_results", "to_json"]
