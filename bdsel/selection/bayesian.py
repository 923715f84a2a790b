"""The paper's method: Bayesian data selection (Deng, Cui, Zhu, NeurIPS 2023).

score(x, y) = α · mean_s log p(y | f_s) + (1 − α) · log p_zs(y | x) − log mean_s p(y | f_s)

with f_s samples from the last-layer KFAC Laplace posterior of the model being trained
(``bdsel.laplace``) and p_zs the cached zero-shot predictor (``zs_logprobs`` lookup, with
``zeroshot.temperature`` already applied). The posterior is updated after every step from
the selected batch's training forward.
"""

from __future__ import annotations

from typing import Any

import torch

from bdsel.laplace import LastLayerLaplace
from bdsel.selection.base import (
    Candidates,
    ForwardOutputs,
    Selection,
    SelectorContext,
    top_k_positions,
)
from bdsel.selection.bayesian_score import (
    adaptive_alpha,
    score_from_terms,
    streaming_score_terms,
)
from bdsel.selection.registry import register_selector
from bdsel.selection.simple import WarmupSelector


@register_selector("bayesian")
class Bayesian(WarmupSelector):
    needs_forward = True
    requires = ("zs_logprobs",)

    def __init__(self, context: SelectorContext) -> None:
        super().__init__(context)
        s = context.config.select
        self.select_config = s
        self.posterior = LastLayerLaplace(
            context.n_features,
            context.n_classes,
            prior_precision=s.prior_precision,
            n_effective=s.n_effective,
            momentum=s.momentum,
            fisher=s.fisher,
            device=context.device,
        )
        self.zs_logprobs = context.lookups["zs_logprobs"]

    def select(
        self,
        candidates: Candidates,
        outputs: ForwardOutputs | None,
        generator: torch.Generator,
    ) -> Selection:
        if self.uniform_epoch:
            return self.uniform.select(candidates, outputs, generator)
        assert outputs is not None
        labels = candidates.labels
        n = labels.shape[0]

        zs = self.zs_logprobs[candidates.indices]  # [n_B, C]
        first: list[torch.Tensor] = []

        def chunks():
            for piece in self.posterior.iter_logit_samples(
                outputs.logits,
                outputs.features,
                self.select_config.n_samples,
                generator,
                shared_noise=self.select_config.shared_noise,
            ):
                if not first:
                    first.append(piece)
                yield piece

        terms = streaming_score_terms(chunks(), zs, labels)
        if self.select_config.adaptive_alpha:
            alpha = adaptive_alpha(terms.zs_logprob, terms.log_mean_lik)
        else:
            alpha = torch.tensor(self.select_config.alpha, device=labels.device)
        scores = score_from_terms(terms, alpha)
        positions = top_k_positions(scores, self.n_selected)

        # Predictive spread of the observed label's logit (0 before the first update: MAP).
        sample0 = first[0]
        observed_logit = sample0[:, torch.arange(n, device=labels.device), labels]
        pred_std = (
            observed_logit.std(0).mean() if sample0.shape[0] > 1 else observed_logit.new_zeros(())
        )
        selected_labels = labels[positions]
        zs_agree = (zs[positions].argmax(1) == selected_labels).float().mean()
        return Selection(
            positions=positions,
            scalars={
                "alpha": alpha.float(),
                "term_loglik": terms.mean_loglik.mean().float(),
                "term_zs": terms.zs_logprob.mean().float(),
                "term_lme": terms.log_mean_lik.mean().float(),
                "pred_std": pred_std.float(),
                "zs_agree": zs_agree,
            },
        )

    def wants_forward(self) -> bool:
        return not self.uniform_epoch  # uniform picks (warm-up, annealing) need no forward

    def plausibility(self, candidates: Candidates) -> torch.Tensor | None:
        """The zero-shot log-prob of the observed label: the score's free, cached term."""
        if self.uniform_epoch:
            return None
        return self.zs_logprobs[candidates.indices, candidates.labels].float()

    def observe(self, selected: Candidates, outputs: ForwardOutputs) -> None:
        probs = torch.softmax(outputs.logits.float(), dim=1)
        # Under torchrun every rank folds the union of all ranks' selected batches into A and G,
        # so all ranks hold the same posterior.
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.posterior.update(outputs.features, probs, selected.labels, all_reduce=distributed)

    def state_dict(self) -> dict[str, Any]:
        return {"posterior": self.posterior.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.posterior.load_state_dict(state["posterior"])
