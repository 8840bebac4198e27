"""Maps between two models' residual streams, fitted on the same texts' last-token activations.

``affine``: ridge least squares ``y = x W + b`` on centred activations, the ridge chosen on an inner split of
the fitting prompts (never on the held-out prompts that the reported fit is measured on) unless given.
``orthogonal``: Procrustes after centring both sides, with one global scale: a residual stream carries a large
constant component that no rotation produces (so both sides are centred and the target mean is the bias), and the
two streams have different norms (so one scalar rescales); the map keeps angles between source vectors (up to a
projection when the source is wider) and has no free parameter to overfit a few hundred prompts.
``identity``: the paper's same-shape transfer, refused unless both widths are equal.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float

from ..errors import DatasetError, LayerError, ShapeError, VectorFileError, WorkbenchError
from ..hooks import RESID_HOOKS
from ..io import load_tensors, save_tensors
from ..version import __version__

KINDS: tuple[str, ...] = ("affine", "orthogonal", "identity")
MIN_PROMPTS = 10  # distinct texts a fit needs: 8 to fit, 2 held out at the default 20%
HELDOUT = 0.2  # share of the texts held out to measure the fit
RIDGE_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # relative to the mean eigenvalue of X'X
POSITION = "last token"


def _side(model: Any) -> tuple[str, int, int]:
    """``(name, d_model, n_layers)`` of a loaded model."""
    from ..models.loading import model_info

    return model_info(model).name, int(model.cfg.d_model), int(model.cfg.n_layers)


def check_side_layer(what: str, layer: Any, name: str, n_layers: int) -> int:
    """A layer index of one side (``source``/``target``), or a one-line ``LayerError`` naming that model's range."""
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise LayerError(f"{what}_layer must be an integer, got {layer!r}")
    if not 0 <= int(layer) < n_layers:
        raise LayerError(f"{what}_layer {layer} is out of range: {name} has layers 0..{n_layers - 1}")
    return int(layer)


def check_kind(kind: Any) -> str:
    """``kind`` if it is one of :data:`KINDS`."""
    if kind not in KINDS:
        raise WorkbenchError(f"unknown map kind {kind!r}; choose one of {', '.join(KINDS)}")
    return kind


@dataclass(frozen=True)
class ResidualMap:
    """``y = x @ weight + bias``: source-model activations at ``source_layer`` to the target's at ``target_layer``.

    ``metrics`` holds the held-out fit (``r2``, ``cosine``, ``centred_cosine`` with 95% intervals, ``n_fit``,
    ``n_heldout``); ``regularisation`` what kept the fit well posed (the ridge, or Procrustes' scale).
    """

    weight: Float[torch.Tensor, "d_source d_target"]
    bias: Float[torch.Tensor, "d_target"]
    kind: str
    source_model: str
    target_model: str
    source_layer: int
    target_layer: int
    n_source_layers: int
    n_target_layers: int
    hook: str = "resid_post"
    metrics: dict[str, Any] = field(default_factory=dict)
    regularisation: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_kind(self.kind)
        if self.weight.dim() != 2 or self.bias.dim() != 1 or self.bias.shape[0] != self.weight.shape[1]:
            raise ShapeError(f"map {self.label}: weight {tuple(self.weight.shape)} and bias {tuple(self.bias.shape)} do not fit")
        if not (torch.isfinite(self.weight).all() and torch.isfinite(self.bias).all()):
            raise ShapeError(f"map {self.label}: weight or bias holds NaN or infinite values")
        check_side_layer("source", self.source_layer, self.source_model, self.n_source_layers)
        check_side_layer("target", self.target_layer, self.target_model, self.n_target_layers)
        if self.kind == "identity" and self.d_source != self.d_target:
            raise ShapeError(f"identity map: d_model differs ({self.source_model} {self.d_source}, {self.target_model} {self.d_target})")

    @property
    def d_source(self) -> int:
        return int(self.weight.shape[0])

    @property
    def d_target(self) -> int:
        return int(self.weight.shape[1])

    @property
    def label(self) -> str:
        return f"{self.kind} {self.source_model}[{self.source_layer}] -> {self.target_model}[{self.target_layer}]"

    def __call__(self, x: Float[torch.Tensor, "*n d_source"]) -> Float[torch.Tensor, "*n d_target"]:
        """Map activations (any leading shape); ``map(acts)``."""
        if x.shape[-1] != self.d_source:
            raise ShapeError(f"map {self.label}: expected activations of width {self.d_source}, got {tuple(x.shape)}")
        return x.float() @ self.weight + self.bias

    def map_vector(self, v: Float[torch.Tensor, "*n d_source"]) -> Float[torch.Tensor, "*n d_target"]:
        """Map a difference of activations (the bias cancels): ``map.map_vector(direction.at(20).vector)``."""
        if v.shape[-1] != self.d_source:
            raise ShapeError(f"map {self.label}: expected vectors of width {self.d_source}, got {tuple(v.shape)}")
        return v.float() @ self.weight

    def check_models(self, source: Any | None = None, target: Any | None = None) -> None:
        """One-line error unless this map was fitted between these two models (names, widths, layer counts)."""
        for what, model, name, d, n in (("source", source, self.source_model, self.d_source, self.n_source_layers),
                                        ("target", target, self.target_model, self.d_target, self.n_target_layers)):
            if model is None:
                continue
            m_name, m_d, m_n = _side(model)
            if (m_name, m_d, m_n) != (name, d, n):
                raise ShapeError(f"map {self.label}: its {what} is {name} ({n} layers x {d}); this run's {what} is "
                                 f"{m_name} ({m_n} layers x {m_d})")

    def metadata(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "source_model": self.source_model, "target_model": self.target_model,
            "source_layer": self.source_layer, "target_layer": self.target_layer, "d_source": self.d_source,
            "d_target": self.d_target, "n_source_layers": self.n_source_layers, "n_target_layers": self.n_target_layers,
            "hook": self.hook, "metrics": self.metrics, "regularisation": self.regularisation, "extra": self.extra,
        }

    def save(self, path: str | Path) -> None:
        """Write this map as safetensors with JSON metadata: ``m.save("maps/qwen16-smol20.safetensors")``."""
        save_maps(path, [self])

    @classmethod
    def load(cls, path: str | Path, source: Any | None = None, target: Any | None = None) -> "ResidualMap":
        """Read a file holding one map (checked against ``source``/``target`` when given): ``ResidualMap.load(p)``."""
        maps = load_maps(path, source, target)
        if len(maps) != 1:
            raise VectorFileError(f"{path}: holds {len(maps)} maps; use load_maps for a set")
        return maps[0]


def save_maps(path: str | Path, maps: Sequence[ResidualMap]) -> None:
    """Write several maps (one per layer pair) to one safetensors file: ``save_maps("maps.safetensors", maps)``."""
    maps = list(maps)
    if not maps:
        raise WorkbenchError("save_maps: no maps given")
    tensors: dict[str, torch.Tensor] = {}
    for i, m in enumerate(maps):
        tensors[f"weight.{i}"], tensors[f"bias.{i}"] = m.weight.float().clone(), m.bias.float().clone()
    save_tensors(path, tensors, {"kind": "residual_maps", "workbench_version": __version__,
                                 "maps": [m.metadata() for m in maps]})


_FIELDS = ("kind", "source_model", "target_model", "source_layer", "target_layer", "d_source", "d_target",
           "n_source_layers", "n_target_layers")


def load_maps(path: str | Path, source: Any | None = None, target: Any | None = None) -> list[ResidualMap]:
    """The maps in a file written by :func:`save_maps`, checked against ``source``/``target`` when given.

    >>> maps = load_maps("maps.safetensors", source=qwen, target=smol)
    """
    tensors, meta = load_tensors(path, "residual_maps")
    entries = meta.get("maps")
    if not isinstance(entries, list) or not entries:
        raise VectorFileError(f"{path}: a map file lists its maps under 'maps'; found {type(entries).__name__}")
    out = []
    for i, m in enumerate(entries):
        if not isinstance(m, dict) or any(k not in m for k in _FIELDS):
            missing = [k for k in _FIELDS if not isinstance(m, dict) or k not in m]
            raise VectorFileError(f"{path}: map {i} lacks {', '.join(missing)}")
        if f"weight.{i}" not in tensors or f"bias.{i}" not in tensors:
            raise VectorFileError(f"{path}: map {i} has no weight.{i}/bias.{i} tensors")
        weight, bias = tensors[f"weight.{i}"].float(), tensors[f"bias.{i}"].float()
        if tuple(weight.shape) != (m["d_source"], m["d_target"]):
            raise VectorFileError(f"{path}: map {i} weight has shape {tuple(weight.shape)}, metadata says "
                                  f"({m['d_source']}, {m['d_target']})")
        hook = m.get("hook", "resid_post")
        if hook not in RESID_HOOKS:
            raise VectorFileError(f"{path}: map {i} hook {hook!r} is not one of {RESID_HOOKS}")
        try:
            out.append(ResidualMap(
                weight=weight, bias=bias, kind=m["kind"], source_model=str(m["source_model"]), target_model=str(m["target_model"]),
                source_layer=m["source_layer"], target_layer=m["target_layer"], n_source_layers=m["n_source_layers"],
                n_target_layers=m["n_target_layers"], hook=hook, metrics=dict(m.get("metrics", {})),
                regularisation=dict(m.get("regularisation", {})), extra=dict(m.get("extra", {})),
            ))
        except WorkbenchError as exc:
            raise VectorFileError(f"{path}: map {i}: {exc}") from None
    for m in out:
        m.check_models(source, target)
    return out


# --- fitting on activations -----------------------------------------------------------------
def split_indices(n: int, heldout: float = HELDOUT, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``(fit, held_out)`` index split of ``n`` texts: ``fit_idx, held_idx = split_indices(100)``."""
    if isinstance(heldout, bool) or not isinstance(heldout, (int, float)) or not 0 < heldout < 1:
        raise WorkbenchError(f"heldout is a share in (0, 1), got {heldout!r}")
    n_held = max(2, int(round(heldout * n)))
    if n - n_held < MIN_PROMPTS - 2:
        raise DatasetError(f"a map needs at least {MIN_PROMPTS} distinct fit texts ({MIN_PROMPTS - 2} to fit, 2 held out "
                           f"at heldout={heldout:g}); got {n}")
    return _split(n, n_held, seed)


def _split(n: int, n_held: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_held:].sort().values, perm[:n_held].sort().values


def _centre(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = x.mean(0)
    return x - mu, mu


def _ridge_weights(xc: torch.Tensor, yc: torch.Tensor, lambdas: Sequence[float], cache: dict | None = None,
                   key: str = "") -> list[torch.Tensor]:
    """Ridge solutions ``(X'X + l I)^-1 X'Y`` for several ``l`` from one SVD of ``X`` (float64; kept in ``cache[key]``
    when given, for fits of one ``X`` to several targets)."""
    if cache is not None and key in cache:
        u, s, vh = cache[key]
    else:
        u, s, vh = torch.linalg.svd(xc, full_matrices=False)
        if cache is not None:
            cache[key] = (u, s, vh)
    uty = u.T @ yc
    return [vh.T @ ((s / (s * s + lam))[:, None] * uty) for lam in lambdas]


def _r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    total = float(((y - y.mean(0)) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / max(total, 1e-30)


def fit_affine(x: Float[torch.Tensor, "n d_source"], y: Float[torch.Tensor, "n d_target"], ridge: float | None = None,
               seed: int = 0, cache: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Ridge least squares on centred activations: ``weight, bias, reg = fit_affine(x, y)``.

    ``ridge`` is relative to the mean eigenvalue of the centred ``x'x``; ``None`` picks it from
    :data:`RIDGE_GRID` by the R2 on an inner 20% of ``x`` (then refits on all of ``x``). ``cache``: a dict kept
    across calls with the same ``x`` and ``seed`` (the SVDs of ``x`` are reused).
    """
    x, y = x.double(), y.double()
    xc, mu_x = _centre(x)
    yc, mu_y = _centre(y)
    scale = float((xc * xc).sum()) / x.shape[1]  # mean eigenvalue of X'X
    if ridge is None:
        if x.shape[0] < 4:
            raise DatasetError(f"choosing the ridge needs at least 4 fit texts; got {x.shape[0]} (or give ridge=)")
        inner_fit, inner_val = _split(x.shape[0], max(2, int(round(HELDOUT * x.shape[0]))), seed + 1)
        xf, mf = _centre(x[inner_fit])
        yf, my = _centre(y[inner_fit])
        s_inner = float((xf * xf).sum()) / x.shape[1]
        scores = []
        for alpha, w in zip(RIDGE_GRID, _ridge_weights(xf, yf, [a * s_inner for a in RIDGE_GRID], cache, "inner")):
            scores.append((_r2((x[inner_val] - mf) @ w + my, y[inner_val]), alpha))
        best_r2, alpha = max(scores)
        chosen = {"chosen_on": "inner validation split of the fit texts", "inner_r2": round(best_r2, 4),
                  "grid": list(RIDGE_GRID)}
    else:
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
            raise WorkbenchError(f"ridge must be a finite number >= 0, got {ridge!r}")
        alpha, chosen = float(ridge), {"chosen_on": "given"}
    (w,) = _ridge_weights(xc, yc, [alpha * scale], cache, "outer")
    reg = {"ridge": alpha, "ridge_absolute": alpha * scale, "relative_to": "mean eigenvalue of centred X'X", **chosen,
           "underdetermined": x.shape[0] <= x.shape[1]}
    return w.float(), (mu_y - mu_x @ w).float(), reg


def fit_orthogonal(x: Float[torch.Tensor, "n d_source"], y: Float[torch.Tensor, "n d_target"]
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Scaled Procrustes on centred activations (semi-orthogonal when widths differ): ``w, b, reg = fit_orthogonal(x, y)``."""
    x, y = x.double(), y.double()
    xc, mu_x = _centre(x)
    yc, mu_y = _centre(y)
    u, s, vh = torch.linalg.svd(xc.T @ yc, full_matrices=False)
    scale = float(s.sum()) / max(float((xc * xc).sum()), 1e-30)
    w = scale * (u @ vh)
    return w.float(), (mu_y - mu_x @ w).float(), {"scale": scale, "centred": True}


def fit_weights(kind: str, x: torch.Tensor, y: torch.Tensor, ridge: float | None = None, seed: int = 0,
                cache: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(weight, bias, regularisation)`` of a map of ``kind`` fitted on paired rows: ``fit_weights("orthogonal", x, y)``."""
    check_kind(kind)
    if kind == "identity":
        if x.shape[1] != y.shape[1]:
            raise ShapeError(f"identity map needs equal widths; source has {x.shape[1]}, target {y.shape[1]}")
        return torch.eye(x.shape[1]), torch.zeros(x.shape[1]), {}
    if kind == "orthogonal":
        if ridge is not None:
            raise WorkbenchError("ridge is for affine maps; an orthogonal map has no ridge")
        return fit_orthogonal(x, y)
    return fit_affine(x, y, ridge, seed, cache)


def _mean_ci(values: torch.Tensor) -> dict[str, float]:
    n = values.numel()
    mean = float(values.mean())
    half = 1.96 * float(values.std()) / math.sqrt(n) if n > 1 else math.nan
    return {"mean": round(mean, 4), "lo": round(mean - half, 4), "hi": round(mean + half, 4)}


def fit_metrics(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                y_fit_mean: torch.Tensor) -> dict[str, Any]:
    """R2 and mean cosines (raw, and centred on the fit texts' target mean) of ``x @ weight + bias`` against ``y``."""
    pred = x.float() @ weight + bias
    cos = torch.nn.functional.cosine_similarity(pred, y.float(), dim=-1)
    ccos = torch.nn.functional.cosine_similarity(pred - y_fit_mean, y.float() - y_fit_mean, dim=-1)
    c, cc = _mean_ci(cos), _mean_ci(ccos)
    return {"r2": round(_r2(pred.double(), y.double()), 4), "cosine": c["mean"], "cosine_lo": c["lo"], "cosine_hi": c["hi"],
            "centred_cosine": cc["mean"], "centred_cosine_lo": cc["lo"], "centred_cosine_hi": cc["hi"], "n": int(x.shape[0])}


def fit_map_from_activations(
    x: Float[torch.Tensor, "n d_source"],
    y: Float[torch.Tensor, "n d_target"],
    *,
    kind: str = "affine",
    source: tuple[str, int, int],
    target: tuple[str, int, int],
    ridge: float | None = None,
    heldout: float = HELDOUT,
    seed: int = 0,
    hook: str = "resid_post",
    extra: dict[str, Any] | None = None,
    cache: dict | None = None,
) -> ResidualMap:
    """Fit on a seeded share of the rows, report the fit on the rest; ``source``/``target`` are ``(name, layer, n_layers)``.

    >>> m = fit_map_from_activations(xs, ys, source=("qwen", 16, 24), target=("smol", 20, 30))
    """
    check_kind(kind)
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ShapeError(f"fit_map: expected [n, d] activations of the same n, got {tuple(x.shape)} and {tuple(y.shape)}")
    if kind == "identity" and x.shape[1] != y.shape[1]:
        raise ShapeError(f"identity map needs equal widths; {source[0]} has d_model {x.shape[1]}, {target[0]} {y.shape[1]}")
    fit_idx, held_idx = split_indices(int(x.shape[0]), heldout, seed)
    weight, bias, reg = fit_weights(kind, x[fit_idx], y[fit_idx], ridge, seed, cache)
    metrics = fit_metrics(weight, bias, x[held_idx], y[held_idx], y[fit_idx].float().mean(0))
    n_heldout = metrics.pop("n")
    metrics = {**metrics, "n_fit": int(fit_idx.numel()), "n_heldout": n_heldout, "heldout_share": heldout, "seed": seed,
               "position": POSITION}
    return ResidualMap(weight=weight, bias=bias, kind=kind, source_model=source[0], target_model=target[0],
                       source_layer=source[1], target_layer=target[1], n_source_layers=source[2], n_target_layers=target[2],
                       hook=hook, metrics=metrics, regularisation=reg, extra=dict(extra or {}))


# --- fitting on models ----------------------------------------------------------------------
def excluded_texts(exclude: Any) -> set[str]:
    """Texts a fit must not see: a ``PairDataset``'s prompts with and without the instruction, or plain strings."""
    if exclude is None:
        return set()
    if hasattr(exclude, "prompts") and hasattr(exclude, "prompts_without_instruction"):
        return {*exclude.prompts(), *(p for p in exclude.prompts_without_instruction() if p is not None)}
    if isinstance(exclude, str):
        return {exclude}
    return {str(t) for t in exclude}


def check_fit_texts(prompts: Any, exclude: Any = None, minimum: int = MIN_PROMPTS) -> list[str]:
    """Distinct fit texts (order kept), refusing too few or any of the excluded pairs': ``check_fit_texts(texts, title_pairs)``."""
    if prompts is None or isinstance(prompts, (str, bytes, dict)):
        raise DatasetError(f"fit texts must be a list of strings, got {type(prompts).__name__}")
    texts = list(dict.fromkeys(prompts))
    if any(not isinstance(t, str) or not t for t in texts):
        raise DatasetError("fit texts must be non-empty strings")
    leaked = [t for t in texts if t in excluded_texts(exclude)]
    if leaked:
        raise DatasetError(f"{len(leaked)} of the {len(texts)} fit texts belong to the pairs being transferred "
                           f"(e.g. {leaked[0][:60]!r}): fit on texts disjoint from them")
    if len(texts) < minimum:
        raise DatasetError(f"a map needs at least {minimum} distinct fit texts ({minimum - 2} to fit, 2 held out); got {len(texts)}")
    return texts


def fit_map(
    source: Any,
    target: Any,
    prompts: Sequence[str],
    *,
    source_layer: int,
    target_layer: int,
    kind: str = "affine",
    ridge: float | None = None,
    heldout: float = HELDOUT,
    seed: int = 0,
    exclude: Any = None,
    hook: str = "resid_post",
    batch_size: int = 16,
    progress: bool = False,
) -> ResidualMap:
    """Fit a map from ``source``'s residual stream to ``target``'s on the last token of ``prompts``.

    ``exclude``: the pairs of the direction to be transferred (a ``PairDataset``); a fit text among them is refused.
    Every check (kind, layers on both sides, widths for identity, texts) runs before any activation.

    >>> m = wb.fit_map(qwen, smol, texts, source_layer=16, target_layer=20, exclude=title_pairs)
    """
    from ..activations import collect_activations

    check_kind(kind)
    s_name, s_d, s_n = _side(source)
    t_name, t_d, t_n = _side(target)
    check_side_layer("source", source_layer, s_name, s_n)
    check_side_layer("target", target_layer, t_name, t_n)
    if kind == "identity" and s_d != t_d:
        raise ShapeError(f"identity map needs equal widths; {s_name} has d_model {s_d}, {t_name} {t_d}")
    if hook not in RESID_HOOKS:
        raise WorkbenchError(f"unknown hook {hook!r}; choose one of {RESID_HOOKS}")
    texts = check_fit_texts(prompts, exclude)
    split_indices(len(texts), heldout, seed)  # a bad heldout share fails here, before any activation
    extra = {"n_texts": len(texts)}
    if source is target and kind != "identity":
        warnings.warn(f"fit_map: the same model ({s_name}) on both sides with a {kind} map", stacklevel=2)
        extra["same_model"] = True
    kw = dict(hook=hook, batch_size=batch_size, progress=progress)
    x = collect_activations(source, texts, layers=[source_layer], **kw)[:, 0]
    y = collect_activations(target, texts, layers=[target_layer], **kw)[:, 0]
    return fit_map_from_activations(x, y, kind=kind, source=(s_name, source_layer, s_n), target=(t_name, target_layer, t_n),
                                    ridge=ridge, heldout=heldout, seed=seed, hook=hook, extra=extra)
