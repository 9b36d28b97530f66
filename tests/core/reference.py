"""Independent, loop-by-loop implementations of the method (docs/DESIGN.md "The method"), used as test oracles.

Written from those formulas with Python floats and the ``math`` module only, so they share
no code (and no vectorised trick) with ``mapo_verl.core``.
"""

from __future__ import annotations

import math


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def relevance_row(h_pol: list[float], h_abl: list[float], mask: list[int], gate: list[int], tau_base: float,
                  cap: float) -> tuple[list[float], list[float]]:
    """ω̃ and ν̃ of one row, straight from the formulas."""
    valid = [i for i, m in enumerate(mask) if m]
    omega = [0.0] * len(mask)
    nu = [0.0] * len(mask)
    if not valid:
        return omega, nu
    length = len(valid)
    tau = tau_base * math.log(max(length, 2))
    r = {i: abs(h_abl[i] - h_pol[i]) for i in valid}
    for i, p in zip(valid, softmax([r[i] / tau for i in valid])):
        omega[i] = min(length * p, cap) if cap > 0 else length * p
    gated = [i for i in valid if gate[i]]
    if gated:
        for i, p in zip(gated, softmax([-r[i] / tau for i in gated])):
            nu[i] = min(len(gated) * p, cap) if cap > 0 else len(gated) * p
    return omega, nu


def temporal_row(mask: list[int], kappa: float) -> list[float]:
    length = sum(1 for m in mask if m)
    out, t = [], 0
    for m in mask:
        if m:
            t += 1
            out.append((t / length) ** kappa)
        else:
            out.append(0.0)
    return out


def gate_value(failed: bool, adv_abs: float, fail_floor: float, adv_floor: float, pref_cap: float) -> float:
    f_hat = max(1.0 if failed else 0.0, fail_floor)
    magnitude = max(adv_abs, adv_floor) if failed else adv_abs
    gate = f_hat * magnitude
    return min(gate, pref_cap) if pref_cap > 0 else gate


def attention_loss(mass, mask, nu, pos, failed, adv_abs, *, kappa, eps, fail_floor, adv_floor, pref_cap) -> float:
    """L_attn = (1/G) Σ_g gate_g (1/N_pos,g) Σ_t (t/T_g)^κ ν̃_t pos_t (−log(a_t + ε)); G = rows with a response."""
    rows = [g for g in range(len(mask)) if any(mask[g])]
    total = 0.0
    for g in rows:
        temporal = temporal_row(mask[g], kappa)
        gated = [t for t in range(len(mask[g])) if mask[g][t] and pos[g][t]]
        if not gated:
            continue
        inner = sum(temporal[t] * nu[g][t] * -math.log(mass[g][t] + eps) for t in gated) / len(gated)
        total += gate_value(failed[g], adv_abs[g], fail_floor, adv_floor, pref_cap) * inner
    return total / max(len(rows), 1)


def clipped_token_loss(ratio: float, adv: float, clip_low: float, clip_high: float, clip_c: float) -> float:
    """veRL's dual-clip PPO token loss, written from the PPO / dual-clip papers."""
    clipped = min(max(ratio, 1 - clip_low), 1 + clip_high)
    loss = max(-adv * ratio, -adv * clipped)
    if adv < 0:
        loss = min(loss, -adv * clip_c)
    return loss


VERL_SEQ_MEAN_EPS = 1e-8  # veRL's seq-mean-token-mean divides each row by (T_g + 1e-8)


def weighted_pg_loss(token_loss, omega, mask, mode: str, horizon: int) -> float:
    """The method's ω̃-weighted PG loss for one veRL loss_agg_mode (see mapo_verl.core.aggregation).

    For ``seq-mean-token-mean`` the row term carries veRL's own ``T_g / (T_g + 1e-8)``
    factor, which GRPO's loss has as well.
    """
    rows = [g for g in range(len(mask)) if any(mask[g])]
    if mode == "seq-mean-token-mean":
        per_row = []
        for g in rows:
            idx = [t for t in range(len(mask[g])) if mask[g][t]]
            row = sum(omega[g][t] * token_loss[g][t] for t in idx) / sum(omega[g][t] for t in idx)
            per_row.append(row * len(idx) / (len(idx) + VERL_SEQ_MEAN_EPS))
        return sum(per_row) / len(rows)
    cells = [(g, t) for g in rows for t in range(len(mask[g])) if mask[g][t]]
    weighted_mean = sum(omega[g][t] * token_loss[g][t] for g, t in cells) / sum(omega[g][t] for g, t in cells)
    n = len(cells)
    if mode == "token-mean":
        return weighted_mean
    if mode == "token-sum":
        return weighted_mean * n
    if mode == "seq-mean-token-sum":
        return weighted_mean * n / len(rows)
    if mode == "seq-mean-token-sum-norm":
        return weighted_mean * n / len(rows) / horizon
    raise ValueError(mode)
