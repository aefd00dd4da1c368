"""GDM's published results (Smith, Rajamanoharan et al., 2025, "Negative Results for SAEs On
Downstream Tasks"), to show beside ours. Gemma 2 9B IT, layer 20, their datasets: context, not a
like-for-like comparison. Only numbers stated in the write-up are given as values; the rest are
their qualitative findings."""

from __future__ import annotations

from assay.report.schema import PublishedResult

SOURCE = "GDM mech interp team, 'Negative Results for SAEs On Downstream Tasks' (2025)"


def gdm_published() -> list[PublishedResult]:
    P = PublishedResult
    return [
        P(source=SOURCE, method="dense linear probe", split="train", value=1.0),
        P(source=SOURCE, method="dense linear probe", split="val (ID)", value=1.0),
        P(source=SOURCE, method="dense linear probe", split="ood", value=0.999),
        P(source=SOURCE, method="1-sparse SAE probe", split="train", note="much worse; fails to fit the training set"),
        P(source=SOURCE, method="k-sparse SAE probe (k~20)", split="val (ID)", note="fits train and generalises in distribution"),
        P(source=SOURCE, method="k-sparse SAE probe (k~20)", split="ood", note="distinctly worse than the dense probe"),
        P(source=SOURCE, method="probe on SAE reconstruction", split="ood", note="significantly worse than the dense probe"),
        P(source=SOURCE, method="chat-finetuned SAE probes", split="ood", note="close about half the gap to dense probes"),
    ]
