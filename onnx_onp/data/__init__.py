"""Datasets, preprocessing, triggers and case files: everything between the user's files and a model input."""

from onnx_onp.data.dataset import Dataset, check_labels, load_dataset
from onnx_onp.data.preprocess import LAYOUTS, Preprocess
from onnx_onp.data.spec import Spec
from onnx_onp.data.triggers import (
    TRIGGERS,
    BlendTrigger,
    PatchTrigger,
    SigTrigger,
    Trigger,
    WaNetTrigger,
    poison,
    trigger_from_dict,
)

__all__ = [
    "LAYOUTS",
    "TRIGGERS",
    "BlendTrigger",
    "Dataset",
    "PatchTrigger",
    "Preprocess",
    "SigTrigger",
    "Spec",
    "Trigger",
    "WaNetTrigger",
    "check_labels",
    "load_dataset",
    "poison",
    "trigger_from_dict",
]
