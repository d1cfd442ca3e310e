"""The pseudo-labelling job on Ray Data: the same per-image work, spread over workers.

Each worker builds one labeller (``make_labeller(cfg)``: the job's
:class:`~wsseg_fast.pipelines.pseudo_label.Labeller` with its SAM, cache and dataset) and runs
``label_one`` on the image indices it gets, writing the
outputs itself — so the outputs are the local run's, byte for byte, and OUT and
the cache must be on storage every worker sees (one machine, or a shared
filesystem on a cluster). The driver only collects the per-image records.
"""

from __future__ import annotations

import json
import os


class _LabelBatch:
    """Ray Data actor: one labeller per worker process."""

    def __init__(self, make_labeller, cfg):
        self.labeller = make_labeller(cfg)

    def __call__(self, batch: dict) -> dict:
        parts = []
        for i in batch["index"]:
            stats = self.labeller.engine.stats if self.labeller.engine else None
            before = (stats.cache_hits, stats.encoded) if stats else (0, 0)
            part = self.labeller.label_one(int(i))
            # Worker counters for the driver's summary (not part of the files on disk).
            part["_cache_hits"], part["_encoded"] = (
                (stats.cache_hits - before[0], stats.encoded - before[1]) if stats else (0, 0)
            )
            parts.append(part)
        return {"index": list(batch["index"]), "part": [json.dumps(p) for p in parts]}


def run_ray(make_labeller, cfg, todo: list[int], *, address: str | None = None, workers: int | None = None):
    """Yield ``(index, part record)`` for each image of ``todo`` as workers finish them."""
    import ray  # optional and heavy (~2 s): only the Ray executor needs it

    if not todo:
        return
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"num_cpus": workers or os.cpu_count()}
        ray.init(
            ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    n = max(1, min(workers or int(ray.available_resources().get("CPU", 1)), len(todo)))
    dataset = ray.data.from_items([{"index": i} for i in todo], override_num_blocks=len(todo))
    labelled = dataset.map_batches(
        _LabelBatch,
        fn_constructor_args=(make_labeller, cfg),
        batch_size=1,
        concurrency=n,
        num_cpus=1,
        batch_format="numpy",
    )
    for row in labelled.iter_rows():
        yield int(row["index"]), json.loads(row["part"])
