"""The benchmark: baselines (and later ONP) on fixtures and real backdoored models, measured the same way.

    from onnx_onp.bench import BenchConfig, discover_cases, run_bench, markdown_report, machine_info
    result = run_bench(discover_cases("all"), BenchConfig(defenses=("none", "clp", "fp", "random")))
    print(markdown_report(result, machine_info()))
"""

from .cases import (DATASETS, FAMILIES, GTSRB_SPLIT_SEED, GTSRB_TRAIN, MNIST_DEFENSE_POOL, MNIST_SPLIT_SEED, Case,
                    DataSplits, UnknownCaseError, dataset_of, discover_cases)
from .harness import (DEFAULT_DEFENSES, BenchConfig, BenchResult, CaseResult, OpenedCase, PeakRss, Row, der, open_case,
                      run_bench, run_case)
from .report import (COLUMNS, TableWriter, describe_machine, format_row, header_lines, machine_info,
                     markdown_report, result_to_json)

__all__ = [
    "COLUMNS",
    "DATASETS",
    "DEFAULT_DEFENSES",
    "FAMILIES",
    "GTSRB_SPLIT_SEED",
    "GTSRB_TRAIN",
    "MNIST_DEFENSE_POOL",
    "MNIST_SPLIT_SEED",
    "BenchConfig",
    "BenchResult",
    "Case",
    "CaseResult",
    "DataSplits",
    "OpenedCase",
    "PeakRss",
    "Row",
    "TableWriter",
    "UnknownCaseError",
    "dataset_of",
    "der",
    "describe_machine",
    "discover_cases",
    "format_row",
    "header_lines",
    "machine_info",
    "markdown_report",
    "open_case",
    "result_to_json",
    "run_bench",
    "run_case",
]
