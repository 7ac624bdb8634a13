"""The sweep's progress bar: rows (non-padding tokens) on stderr, with an honest total.

The total is ``max_tokens`` when given. Otherwise rows are known only batch by batch, so
when the number of batches is known the total is estimated from the mean rows per batch
so far (exact for unpadded batches, refined every batch) and tqdm can show a percentage
and an ETA; with a one-shot iterator of unknown length there is no total.
"""
from __future__ import annotations


class SweepProgress:
    """``with SweepProgress(enabled, batches=n, max_tokens=m) as p: ... p.batch_done(i, rows)``."""

    def __init__(self, enabled: bool, *, batches: int | None, max_tokens: int | None):
        self.batches = batches
        self.estimate = max_tokens is None
        self.rows = 0
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max_tokens, unit="rows", unit_scale=True, desc="layerprof sweep", dynamic_ncols=True,
                            leave=False, postfix={"batches": f"0/{batches or '?'}"})

    def __enter__(self) -> "SweepProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_sweep(self, index: int, sweeps: int) -> None:
        """Start sweep ``index`` (0-based) of ``sweeps`` over the same batches."""
        self.rows = 0
        if self.bar is not None and index:
            self.bar.reset(total=self.bar.total)
            self.bar.set_description(f"layerprof sweep {index + 1}/{sweeps}")

    def batch_done(self, index: int, rows: int) -> None:
        """Batch ``index`` (0-based) is committed; ``rows``: the sweep's rows so far."""
        added, self.rows = rows - self.rows, rows
        if self.bar is None:
            return
        if self.batches and self.estimate:
            self.bar.total = max(int(round(rows / (index + 1) * self.batches)), rows)
        self.bar.update(added)
        self.bar.set_postfix(batches=f"{index + 1}/{self.batches or '?'}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
