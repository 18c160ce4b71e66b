"""Transformer health (``checks.transformer``, gpt runs): attention entropy collapse and logit growth.

Reads ``transformer.jsonl`` (one record per sample, written by
:class:`babysit.train.callbacks.transformer.TransformerHealthCallback`): per block, each head's
attention entropy (nats, averaged over the queries 1..T-1), the block's largest attention
logit |q.k|/sqrt(hs), the residual stream's RMS; the output logits' mean log Z; the context T.

- ``attention_entropy_collapse``: a head's attention entropy is below
  :data:`COLLAPSE_FRACTION` of ln T at the run's last sample: each query puts nearly all its
  weight on one key. Zhai et al. 2023, "Stabilizing transformer training by preventing
  attention entropy collapse" (arXiv 2303.06296), find that entropy falling towards 0 goes with
  unstable training (loss spikes, divergence), driven by the attention logits' scale (their
  entropy bound falls exponentially with the spectral norm of W_q W_k^T); the bar of a tenth of
  ln T is issue 15's. Uniform causal attention scores the mean of ln(t+1) over the queries,
  0.78 ln T at T = 64. A warning when a collapsed head's logits are past the saturation bar
  (:data:`ATTENTION_LOGIT_BAR`): the collapse Zhai et al. describe. Info otherwise: a sharp head
  with moderate logits is often one doing its job (attending to the previous character).
  Measured on the text-gpt example (2 blocks of 4 heads, T = 64, AdamW at lr 3e-3, early
  stopped after 1232 steps): its sharpest head falls steadily from 0.78 to 0.12 ln T, with
  logits up to 21; heads of runs built to collapse (a copy task at Adam lr 3e-2 or 1e-1) sit at
  0.000-0.005 ln T with logits of 200-2000.
- ``attention_logit_growth`` (warning): a block's largest attention logit, or the output
  logits' |log Z|, still grows: its last sample is at least :data:`GROWTH_FACTOR` times its
  value a third of the way into the samples, and it is past a magnitude where the softmax
  saturates (:data:`ATTENTION_LOGIT_BAR`, :data:`LOG_Z_BAR`). Wortsman et al. 2023,
  "Small-scale proxies for large-scale Transformer training instabilities" (arXiv 2309.14322):
  attention logits that grow without bound collapse attention and make the loss diverge
  (section 3.1, after Dehghani et al. 2023, arXiv 2302.05442), prevented by qk-layernorm; the
  output logits drift until log Z is far from 0 (section 3.2, output logit divergence),
  prevented by z-loss (PaLM, Chowdhery et al. 2022, arXiv 2204.02311: 1e-4 * log^2 Z).

A healthy run keeps its logits bounded: its logits grow in the first steps from the small
GPT-2 initialisation (a max attention logit near 0.1, log Z near ln V) and level off.

Example
-------
>>> flat = [{"step": s, "T": 64, "log_z": 4.2,
...          "blocks": [{"entropy": [3.0, 2.5], "max_logit": 8.0, "rms": 1.0}]} for s in range(0, 100, 10)]
>>> transformer_findings(flat)
[]
>>> grown = [dict(r, blocks=[dict(r["blocks"][0], max_logit=2.0 ** (r["step"] / 10))]) for r in flat]
>>> [(f.id, f.layer) for f in transformer_findings(grown)]
[('attention_logit_growth', 'blocks.0.attn')]
"""

from __future__ import annotations

import math
from typing import Any

from babysit.checks.findings import Finding

# Zhai et al. 2023 (arXiv 2303.06296): a head collapsed when its entropy is below a tenth of
# ln T (issue 15's bar); the text-gpt example's sharpest healthy head: 0.12 ln T (module docstring).
COLLAPSE_FRACTION = 0.10
# Wortsman et al. 2023 (arXiv 2309.14322): "grows without bound", made concrete: the last sample
# is GROWTH_FACTOR times the sample a third of the way in. Measured: the text-gpt example levels
# off (0.9-1.5x over the last two thirds of 24 epochs, max logit 15-33, log Z 6.4 -> 6.7); a
# 1-block GPT on the same text at Adam lr 5e-2 (tests/test_transformer_health.py, seeds 0-4)
# grows 4.5-9.6x to 591-1312 over its last two thirds of 98 steps. Short healthy runs (lr 3e-3)
# may still be in their first rise (2.2-7.5x) but end at 3-14: the saturation bar tells them apart.
GROWTH_FACTOR = 3.0
# Softmax saturation. A logit 50 above the rest leaves them exp(-50) ~ 2e-22 of the weight,
# far below float32's resolution (exp(-16) ~ 1e-7), so the softmax is exactly one-hot and its
# gradient exactly zero; the text-gpt example peaks at 33, qk-layernorm runs at lr 3e-2 at 17.
ATTENTION_LOGIT_BAR = 50.0
# Output logits with |log Z| past 20 sit at magnitudes where bfloat16 resolves them only to 1/8
# (8 significant bits: spacing 0.125 on [16, 32)), 12% in probability; the text-gpt example
# (65 characters, ln V = 4.2) ends at log Z = 6.7.
LOG_Z_BAR = 20.0
MIN_SAMPLES = 3  # a trend needs a start, a middle and an end


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _blocks(record: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = record.get("blocks")
    return [b for b in blocks if isinstance(b, dict)] if isinstance(blocks, list) else []


def _context(records: list[dict[str, Any]]) -> int | None:
    sizes = [r.get("T") for r in records if isinstance(r.get("T"), int) and r["T"] > 1]
    return max(sizes) if sizes else None


def entropy_collapse(records: list[dict[str, Any]], *, qk_norm: bool = False) -> list[Finding]:
    """``attention_entropy_collapse`` when a head ends below :data:`COLLAPSE_FRACTION` of ln T: a
    warning when such a head's logits are past :data:`ATTENTION_LOGIT_BAR`, else info.

    Example
    -------
    >>> records = [{"step": 10, "T": 64, "blocks": [{"entropy": [3.1, 0.02], "max_logit_heads": [4.0, 300.0]}]}]
    >>> [(f.id, f.severity, f.layer, f.evidence["heads"][0]["head"]) for f in entropy_collapse(records)]
    [('attention_entropy_collapse', 'warning', 'blocks.0.attn', 1)]
    """
    T = _context(records)
    if T is None:
        return []
    bar = COLLAPSE_FRACTION * math.log(T)
    last: dict[tuple[int, int], tuple[int, float]] = {}  # (block, head) -> its last finite sample
    first_below: dict[tuple[int, int], int | None] = {}  # the step since which it has stayed below
    for record in records:
        step = record.get("step")
        for b, block in enumerate(_blocks(record)):
            entropies = block.get("entropy")
            for h, value in enumerate(entropies if isinstance(entropies, list) else []):
                entropy = _finite(value)
                if entropy is None or not isinstance(step, int):
                    continue
                last[(b, h)] = (step, entropy)
                if entropy >= bar:
                    first_below[(b, h)] = None
                elif first_below.get((b, h)) is None:
                    first_below[(b, h)] = step
    collapsed = sorted(((entropy, b, h, step) for (b, h), (step, entropy) in last.items() if entropy < bar))
    if not collapsed:
        return []
    heads = [{"block": b, "head": h, "entropy": round(entropy, 4), "fraction_of_log_T": round(entropy / math.log(T), 4),
              "max_logit": _head_logit(records, step, b, h), "below_since_step": first_below.get((b, h)),
              "step": step} for entropy, b, h, step in collapsed]
    saturated = [x for x in heads if x["max_logit"] is not None and x["max_logit"] >= ATTENTION_LOGIT_BAR]
    worst = (saturated or heads)[0]
    named = ", ".join(f"block {x['block']} head {x['head']} ({x['entropy']:.3g} nats"
                      + (f", logits up to {x['max_logit']:.3g})" if x["max_logit"] is not None else ")")
                      for x in (saturated or heads)[:4])
    more = f" and {len(heads) - 4} more" if len(heads) > 4 else ""
    message = (f"Attention collapsed in {len(heads)} head{'s' if len(heads) > 1 else ''}: {named}{more}, below "
               f"{COLLAPSE_FRACTION:.0%} of ln T = {math.log(T):.2f} nats (T = {T}) at the last sample; each query "
               f"puts nearly all its weight on one key (uniform attention: about {_uniform_entropy(T):.2f} nats).")
    if saturated:
        fixes = ("qk-layernorm is on: lower optimizer.lr or add warm-up (schedule.warmup_steps)" if qk_norm else
                 "turn on qk-layernorm (model.qk_norm: true), which bounds the attention logits whose growth "
                 "sharpens the softmax (Wortsman et al. 2023), or lower optimizer.lr / add warm-up")
        message += (f" {len(saturated)} of them with attention logits past {ATTENTION_LOGIT_BAR:g}, where the "
                    f"softmax is one-hot and passes no gradient.")
        advice = (f"Entropy collapse driven by growing logits goes with unstable training (Zhai et al. 2023, "
                  f"arXiv 2303.06296): {fixes}. Zhai et al.'s sigma-Reparam (spectral reparameterisation of the "
                  f"weights) is another fix.")
    else:
        message += f" Their logits stay below {ATTENTION_LOGIT_BAR:g}: the softmax is sharp, not saturated."
        advice = ("A head this sharp is often doing its job (attending to the previous token). It is a concern "
                  "when its logits keep growing or the loss spikes (Zhai et al. 2023, arXiv 2303.06296); then "
                  + ("lower optimizer.lr." if qk_norm else "turn on qk-layernorm (model.qk_norm: true)."))
    return [Finding("attention_entropy_collapse", "warning" if saturated else "info", message, advice,
                    {"heads": heads, "saturated_heads": len(saturated), "log_T": round(math.log(T), 4),
                     "bar_nats": round(bar, 4), "logit_bar": ATTENTION_LOGIT_BAR, "T": T, "qk_norm": qk_norm},
                    layer=f"blocks.{worst['block']}.attn", step=worst["step"])]


def _head_logit(records: list[dict[str, Any]], step: int, block: int, head: int) -> float | None:
    """Head ``head`` of block ``block``'s largest attention logit at ``step`` (None when not recorded)."""
    for record in reversed(records):
        if record.get("step") == step:
            blocks = _blocks(record)
            heads = blocks[block].get("max_logit_heads") if block < len(blocks) else None
            if isinstance(heads, list) and head < len(heads):
                value = _finite(heads[head])
                return round(value, 4) if value is not None else None
            return None
    return None


def _uniform_entropy(T: int) -> float:
    """The entropy of uniform causal attention averaged over the queries 1..T-1: mean of ln(t+1)."""
    return sum(math.log(t + 1) for t in range(1, T)) / (T - 1)


def _growth(series: list[tuple[int, float]], bar: float) -> dict[str, Any] | None:
    """The series' growth over its last two thirds, when it qualifies (GROWTH_FACTOR and ``bar``)."""
    if len(series) < MIN_SAMPLES:
        return None
    (start_step, start), (end_step, end) = series[len(series) // 3], series[-1]
    if end < bar or end < GROWTH_FACTOR * max(start, 1e-12):
        return None
    return {"from_step": start_step, "from": round(start, 4), "to_step": end_step, "to": round(end, 4),
            "factor": round(end / max(start, 1e-12), 2), "peak": round(max(v for _, v in series), 4), "bar": bar}


def logit_growth(records: list[dict[str, Any]], *, qk_norm: bool = False, loss_z: float = 0.0) -> list[Finding]:
    """``attention_logit_growth`` when a block's max attention logit or |log Z| still grows past saturation.

    Example
    -------
    >>> records = [{"step": s, "log_z": -1.5 ** s, "blocks": []} for s in range(10)]
    >>> [(f.id, f.layer) for f in logit_growth(records)]
    [('attention_logit_growth', 'output logits')]
    """
    per_block: dict[int, list[tuple[int, float]]] = {}
    log_z: list[tuple[int, float]] = []
    for record in records:
        step = record.get("step")
        if not isinstance(step, int):
            continue
        for b, block in enumerate(_blocks(record)):
            value = _finite(block.get("max_logit"))
            if value is not None:
                per_block.setdefault(b, []).append((step, value))
        z = _finite(record.get("log_z"))
        if z is not None:
            log_z.append((step, abs(z)))
    grown_blocks = {b: g for b, series in sorted(per_block.items()) if (g := _growth(series, ATTENTION_LOGIT_BAR))}
    grown_z = _growth(log_z, LOG_Z_BAR)
    if not grown_blocks and grown_z is None:
        return []
    seen, fixes = [], []
    for b, g in grown_blocks.items():
        seen.append(f"block {b}'s largest attention logit grew from {g['from']:.3g} (step {g['from_step']}) "
                    f"to {g['to']:.3g} (step {g['to_step']}), {g['factor']:.3g}x")
    if grown_blocks:
        fixes.append("qk-layernorm (model.qk_norm: true; Dehghani et al. 2023, Wortsman et al. 2023) bounds the "
                     "attention logits" if not qk_norm else
                     "qk-layernorm is on and the logits still grow: its gains grow with the learning rate; "
                     "lower optimizer.lr or add weight decay")
    if grown_z is not None:
        seen.append(f"the output logits' |log Z| grew from {grown_z['from']:.3g} (step {grown_z['from_step']}) "
                    f"to {grown_z['to']:.3g} (step {grown_z['to_step']}), {grown_z['factor']:.3g}x")
        fixes.append("z-loss (loss_z: 1e-4, PaLM) holds log Z near 0" if not loss_z else
                     f"z-loss is on (loss_z: {loss_z:g}) and log Z still drifts: raise loss_z or lower optimizer.lr")
    message = ("Logits grow without bound: " + "; ".join(seen) + f" (past {ATTENTION_LOGIT_BAR:g} for attention, "
               f"{LOG_Z_BAR:g} for |log Z|, where the softmax saturates). Unchecked, this collapses attention and "
               f"makes the loss diverge (Wortsman et al. 2023, arXiv 2309.14322).")
    advice = "; ".join(fixes) + ". A lower learning rate or a longer warm-up also slows the growth."
    evidence: dict[str, Any] = {"blocks": {str(b): g for b, g in grown_blocks.items()}, "log_z": grown_z,
                                "growth_factor": GROWTH_FACTOR, "qk_norm": qk_norm, "loss_z": loss_z}
    first = next(iter(grown_blocks), None)
    layer = f"blocks.{first}.attn" if first is not None else "output logits"
    step = grown_blocks[first]["to_step"] if first is not None else grown_z["to_step"]  # type: ignore[index]
    return [Finding("attention_logit_growth", "warning", message, advice, evidence, layer=layer, step=step)]


def transformer_findings(records: list[dict[str, Any]], *, qk_norm: bool = False,
                         loss_z: float = 0.0) -> list[Finding]:
    """The transformer-health findings of a run's ``transformer.jsonl`` records; ``qk_norm`` and
    ``loss_z``: what the run had on, so that the advice fits."""
    return entropy_collapse(records, qk_norm=qk_norm) + logit_growth(records, qk_norm=qk_norm, loss_z=loss_z)


__all__ = ["ATTENTION_LOGIT_BAR", "COLLAPSE_FRACTION", "GROWTH_FACTOR", "LOG_Z_BAR", "entropy_collapse",
           "logit_growth", "transformer_findings"]
