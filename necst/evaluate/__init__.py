"""evaluate stage: how close is a synthetic sample to real traffic, beside how close real
traffic is to itself (the floor).

Metric functions work on tables (pyarrow or pandas PacketTable / FlowTable), so models call
them directly; ``write_report`` and ``necst evaluate`` add files and plots.
"""
from necst.evaluate.compare import (METRICS, Evaluation, compare, compare_samples, evaluate,
                                    fidelity_report, ratio)
from necst.evaluate.metrics import (categorical_distances, emd, hellinger, jsd, rank_jsd,
                                    share_gap, total_variation)
from necst.evaluate.sampling import marginals_baseline, sample_marginals, split_by_time
from necst.evaluate.views import Sample, prepare

__all__ = [
    "METRICS", "Evaluation", "Sample", "categorical_distances", "compare", "compare_samples",
    "emd", "evaluate", "fidelity_report", "hellinger", "jsd", "marginals_baseline", "prepare",
    "rank_jsd", "ratio", "sample_marginals", "share_gap", "split_by_time", "total_variation",
    "write_report",
]


def write_report(evaluation, out_dir, *, force: bool = False):
    """Write report.json, report.html and plots/*.png (imports matplotlib only here)."""
    from necst.evaluate.report import write_report as _write

    return _write(evaluation, out_dir, force=force)
