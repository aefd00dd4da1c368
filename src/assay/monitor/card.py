"""The bundle's card in markdown: every number and sentence is read from the bundle's spec."""

from __future__ import annotations

from typing import Any

import numpy as np

from assay.monitor.calibrate import recalibration_lines


def fmt(x: Any, nd: int = 3) -> str:
    """A metric for a table: three decimals, a dash where it is undefined (None or NaN)."""
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def render_card(spec: dict[str, Any]) -> str:
    card, sel = spec["card"], spec["card"]["selection"]
    default = spec["default_threshold"]
    nested = sel["nested"]
    aurocs = [r["auroc"] for r in nested.values()]
    worst = min(nested.items(), key=lambda kv: kv[1]["auroc"])
    below = [c for c, r in nested.items() if r["auroc"] < 0.85]
    lines = [
        f"# Monitor card: {spec['name']}", "",
        f"- Model: `{spec['model']['model']}` (weights sha256 {str(spec['model'].get('weights_sha256'))[:16]}), "
        f"layer {spec['layer']}, {spec['dtype']}; probe `{spec['method']}` reading `{_reads(spec['inputs'])}`"
        f"{_pooling(spec.get('probe_config') or {})}, "
        f"trained on data mix `{spec.get('mix', 'all')}`.",
        f"- Trained on {spec['training']['n_rows']} prompts ({spec['training']['n_harmful']} harmful) from splits "
        f"{', '.join(spec['training']['splits'])} of `{spec['training']['data']}`; thresholds set on "
        + (f"{spec['calibration']['n_benign']} benign prompts of the `{spec['calibration']['split']}` split, never "
           "trained on." if spec["calibration"].get("split") is not None else
           f"{spec['calibration']['n_benign']} benign prompts of `{spec['calibration']['source']}` (recalibrated: "
           "see the end of this card)."),
        f"- Chosen among {len(sel['candidates'])} candidates (method x layer x aggregation x data mix) by mean leave-one-collection-out AUROC over "
        f"{len(sel['collections'])} collections: {', '.join(f'{k} {fmt(v)}' for k, v in sel['mean_auroc'].items())}.",
        "",
        "## Held-out collections (nested: the collection shown chose nothing)", "",
        f"Nested leave-one-collection-out AUROC ranges {fmt(min(aurocs))}–{fmt(max(aurocs))} (mean {fmt(float(np.mean(aurocs)))}); "
        f"the worst collection is {worst[0]} ({fmt(worst[1]['auroc'])}). "
        + (f"{len(below)} of {len(aurocs)} collections fall below 0.85: {', '.join(below)}." if below
           else f"Every one of the {len(aurocs)} collections is at or above 0.85."),
        "Recall and FPR are at the 1% threshold set on that fold's benign calibration prompts.",
        *_transfer_sentence(nested), "",
        "| held-out collection | AUROC | recall | FPR | harmful / benign | trained on | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, r in nested.items():
        lines.append(f"| {c} | {fmt(r['auroc'])} | {fmt(r['recall'])} | {fmt(r['fpr'])} | {r['n_pos']} / {r['n_neg']} "
                     f"| {r['n_train']} | {r['chosen']} |")
    study = card.get("study_protocol", {})
    if "splits" in study:
        lines += ["", "## The study's protocol, for comparison", "",
                  f"`{study['candidate']['name']}` trained on the `train` split only (chosen on `val`), thresholds on "
                  "benign calibration prompts:", "",
                  "| split | AUROC | " + " | ".join(f"recall@{k}" for k in spec["thresholds"]) + " |",
                  "|---|---|" + "---|" * len(spec["thresholds"])]
        for s, r in study["splits"].items():
            lines.append(f"| {s} | {fmt(r['auroc'])} | " + " | ".join(fmt(r[k]['recall']) for k in spec["thresholds"]) + " |")
        pc = study.get("per_collection", {})
        if pc:
            unseen = {c: r for c, r in pc.items() if not r["in_study_train"]}
            lines += ["", "Per held-out collection, on its rows outside `train` (the same rows for both). The study's "
                      "probe trained on other rows of a collection marked 'yes'; only the others compare like for like "
                      "with the monitor, which never saw the collection:", "",
                      "| collection | n | in the study's train split | study probe AUROC | monitor (nested LOCO) AUROC |",
                      "|---|---|---|---|---|"]
            for c, r in pc.items():
                lines.append(f"| {c} | {r['n']} | {'yes' if r['in_study_train'] else 'no'} | {fmt(r['study_auroc'])} "
                             f"| {fmt(r['monitor_auroc'])} |")
            if unseen:
                s_mean = float(np.mean([r["study_auroc"] for r in unseen.values()]))
                m_mean = float(np.mean([r["monitor_auroc"] for r in unseen.values()]))
                lines += ["", f"On the {len(unseen)} collection(s) the study's probe never trained on "
                          f"({', '.join(unseen)}), mean AUROC is {fmt(s_mean)} for the study's probe and {fmt(m_mean)} "
                          "for the monitor held out from each."]
    cal = card["calibration_split"]
    lines += ["", "## Thresholds", "",
              f"`flagged` means the score is above the `{default}` threshold unless the server is told otherwise.", "",
              "| name | logit threshold | resolvable with this calibration set | recall on calib harmful | FPR on calib benign |",
              "|---|---|---|---|---|"]
    as_built = spec["calibration"].get("split") is not None  # else its calib numbers are at the old thresholds
    for k, t in spec["thresholds"].items():
        lines.append(f"| {k} | {t['threshold']:.4f} | {'yes' if t['resolvable'] else 'no: the highest benign score'} "
                     f"| {fmt(cal[k]['recall'] if as_built else None)} | {fmt(cal[k]['fpr'] if as_built else None)} |")
    lines += ["", f"Calibration-split AUROC: {fmt(cal['auroc'])} ({cal['n_pos']} harmful, {cal['n_neg']} benign; "
              "the benign rows set the thresholds, so their FPR is at most the target by construction).", "",
              f"Build time: {card['timings_seconds'].get('total')} s. Dtype chosen: {spec['dtype']} "
              f"({spec.get('dtype_choice')})."]
    lines += recalibration_lines(spec)
    return "\n".join(lines) + "\n"


def _transfer_sentence(nested: dict[str, Any]) -> list[str]:
    """Collections ranked well but missed at the threshold: their scores moved as a whole."""
    shifted = [c for c, r in nested.items() if r["auroc"] >= 0.95 and r["recall"] < 0.1]
    if not shifted:
        return []
    return [f"In {len(shifted)} collection(s) ({', '.join(shifted)}) the probe ranks prompts well (AUROC at least "
            "0.95) yet flags under 10% of the harmful ones at the 1% threshold: the whole collection scores lower than "
            "the calibration prompts, so a threshold set elsewhere does not transfer to it. Check a monitor on a sample "
            "of the new traffic (`assay monitor eval`) and recalibrate there before trusting its flags."]


def _pooling(cfg: dict[str, Any]) -> str:
    """How a token-level probe makes one score of a prompt's tokens, from its recorded config."""
    if "sharpen" in cfg:
        return (f" (a request locator weights each token by p^{cfg['sharpen']:g}, p its probability of being the "
                "request; a logistic regression reads the weighted mean)")
    if cfg.get("pool") == "rmax":
        return f" (single-token logits, max over windows of {cfg['window']} tokens of their mean)"
    if "pool" in cfg:
        return f" (single-token logits, their {cfg['pool']})"
    return ""


def _reads(inputs: dict[str, Any]) -> str:
    if inputs["reads"] == "tokens":
        return f"tokens (last {inputs['max_tokens']})"
    return str(inputs.get("aggregation"))
