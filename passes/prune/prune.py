"""Structured channel pruning on the ONNX graph, with data-driven reconstruction.

Steps: (1) :mod:`.groups` finds the channel groups that must be pruned together, closing every
group it cannot prove safe; (2) :mod:`.importance` scores each group's units; (3)
:mod:`.targets` picks the kept units for ``ratio`` / ``target_flops``; (4) :mod:`.slicing` removes
them from every member; (5) :mod:`.reconstruct` refits the consumers by ridge least squares on
calibration data so each reproduces the original layer's outputs (no training).

Steps 1-3 are :func:`.plan.make_plan`; the options are a :class:`.config.PruneConfig`.
"""

from __future__ import annotations

import logging
import time

import onnx

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.data import Feeds
from onnxopt.graph import to_model

from .config import PruneConfig
from .plan import Plan, group_table, layer_table, learning_feeds, make_plan, real_data
from .reconstruct import Reconstructor
from .slicing import apply_plan

logger = logging.getLogger(__name__)


class Prune(Pass):
    """Remove whole channels (and attention heads) from coupled layers; refit on data."""

    name = "prune"
    exact = False
    goal = "speed"
    summary = "structured channel pruning with ridge reconstruction"
    tags = ("prune",)
    needs_model = True
    needs_data = True
    config_class = PruneConfig
    config: PruneConfig

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        t0 = time.perf_counter()
        feeds = learning_feeds(model, ctx.feeds, self.config.max_samples)
        p = make_plan(model, self.config, feeds, allow=ctx.allow)
        notes, kept, macs = p.notes, p.kept, p.macs
        if not p.sites:
            return PassResult.unchanged("prune: no prunable channel group", *notes)
        if not kept:
            return PassResult.unchanged("prune: the target removes no channel", *notes)
        kept_index = apply_plan(p.graph, p.analysis, kept)
        pruned = to_model(p.graph, like=model)
        pruned, recon, fits = self._reconstruct(p, pruned, feeds, kept_index, notes)
        est_before, est_after = macs.total, macs.estimate(kept)
        notes.insert(
            0,
            f"prune: {len(kept)} group(s) pruned ({p.method} importance), est. MACs "
            f"{est_before:,.0f} -> {est_after:,.0f} "
            f"({est_after / max(est_before, 1):.1%})",
        )
        details = {
            "importance": p.method,
            "reconstructed": recon,
            "refit_layers": fits,
            "macs_estimate": [est_before, est_after],
            "groups": group_table(p.analysis, p.scores, kept),
            "layers": layer_table(p.base, pruned, macs, kept),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return PassResult(
            changed=True,
            rewrites=len(kept),
            notes=notes,
            sites=[f"group:{p.analysis.groups[g].producers[0]}" for g in kept],
            details=details,
            model=pruned,
        )

    def _reconstruct(
        self,
        p: Plan,
        pruned: onnx.ModelProto,
        feeds: Feeds | None,
        kept_index: dict,
        notes: list[str],
    ) -> tuple[onnx.ModelProto, bool, int]:
        """Refit the consumers when ``reconstruct`` asks for it (default: with real data).
        Returns (model, whether it was refit, layers refit)."""
        real = real_data(feeds)
        recon = self.config.reconstruct
        if recon is None:
            recon = real
        elif recon and not real:
            notes.append(
                "prune: reconstruction skipped: the feeds are synthesized, and a refit "
                "on made-up inputs would fit noise; pass --data"
            )
            recon = False
        if not recon:
            if not real:
                notes.append("prune: no real data; importance by weight norm, no reconstruction")
            return pruned, False, 0
        pruned, rnotes, fits = Reconstructor(
            p.base,
            pruned,
            feeds,
            kept_index,
            alpha=self.config.alpha,
            max_rows=self.config.max_rows,
        ).run()
        notes += rnotes
        return pruned, True, fits
