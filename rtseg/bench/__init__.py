"""`rtseg bench`: measuring engines and pipelines, and comparing them with published results.

Modules: ``stats`` (robust summaries and the stop rule), ``environment`` (the fingerprint stored
with results), ``weights`` (real or random weights), ``measure`` (one configuration),
``worker`` (one configuration in a fresh process), ``runner`` (sweeps and scheduler
comparisons), ``table`` (the published Cityscapes table), ``quality`` (measured mIoU where the
data allows), ``report`` (terminal, JSON, CSV) and ``plot`` (the mIoU-vs-FPS scatter).
"""

from .measure import BenchConfig, run_config
from .runner import SweepSpec, run_sweep
from .stats import StopRule, Summary, summarize

__all__ = ["BenchConfig", "StopRule", "Summary", "SweepSpec", "run_config", "run_sweep", "summarize"]
