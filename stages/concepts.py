"""The concepts stage: directions in the VAE's latent space for tags like "hair=blonde" or "direction=left".

A concept vector is the mean encoder μ of training faces with the tag minus that of faces without it. We check
each one three ways, so a person can trust an edit before making it:
  - separation: ROC AUC of the test faces' projection onto the vector, tagged vs untagged;
  - consistency: decode μ + α·v, re-encode it, and measure how far the projection actually moved per unit of α;
  - landing (embedded faces only, whose factors are exact): a logistic-regression classifier trained on the
    prepared color images judges whether an edit toward e.g. hair=blonde is seen as blonde afterwards.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import torch

from stages import metrics as m
from stages import prepared_set
from stages.checkpoints import MODEL, load_colorizer, load_vae
from stages.contract import Figure, StageContext, StageError, StageSkipped, write_figures
from stages.luma import luma_uint8
from stages.models import apply_colorizer, decode_images, encode_means
from stages.params import ConceptParams
from stages.prepared_set import fitting_rows, image_rows, open_split
from stages.sources import SourceError, decode_file
from stages.training import resolve_device
from stages.viz import save_grid

ALPHAS = (-2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
LANDING_ALPHA = 3.0
LANDING_FACTORS = ("hair", "direction")  # embedded-face factors whose edits are judged by a classifier
VECTORS = "concepts.npz"  # names, vectors, train_tagged: what `pipeline edit` applies
TABLE = "concepts.json"  # each concept's checks and grid files, for a person


def read_tags(path: Path) -> dict[str, np.ndarray]:
    """labels.csv -> {"column=value": bool mask over images}; a cell may hold several values joined by ';'."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    masks: dict[str, np.ndarray] = {}
    for i, row in enumerate(rows):
        for column, cell in row.items():
            if column == "file" or not cell:
                continue
            for value in filter(None, (v.strip() for v in cell.split(";"))):
                masks.setdefault(f"{column}={value}", np.zeros(len(rows), bool))[i] = True
    return masks


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a tagged face projects further along the concept than an untagged one (ties count half)."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average rank of tied scores, 1-based
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def file_stem(concept: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", concept).strip("-")


def edit_consistency(model, mu: torch.Tensor, vector: torch.Tensor) -> float:
    """Mean (projection moved after decode + re-encode) / (α·|v| applied), over faces and α ≠ 0; 1 is perfect."""
    unit = vector / vector.norm()
    alphas = torch.tensor([a for a in ALPHAS if a != 0], device=mu.device)
    edited = mu[:, None] + alphas[None, :, None] * vector  # (F, A, Z)
    start = encode_means(model, decode_images(model, mu)) @ unit  # (F,)
    moved = (encode_means(model, decode_images(model, edited.flatten(0, 1))) @ unit).view(len(mu), -1) - start[:, None]
    return (moved / (alphas * vector.norm())).mean().item()


def landing_rates(concepts: dict, masks: dict[str, np.ndarray], vae, colorizer, exact: bool, color: torch.Tensor,
                  shown: np.ndarray, starts: dict[str, torch.Tensor], seed: int) -> dict[str, float]:
    """For factor concepts: share of edited faces (α = LANDING_ALPHA) the pixel classifier assigns to the target.
    The classifier learns from `color`, the true color training images at `shown` (indices into the set)."""
    rates = {}
    for factor in LANDING_FACTORS:
        values = sorted(name for name in masks if name.startswith(f"{factor}="))
        if len(values) < 2:
            continue
        label_of = np.stack([masks[v] for v in values]).argmax(0)
        judge = m.train_pixel_classifier(color, torch.from_numpy(label_of[shown]).to(color.device),
                                         len(values), seed)
        for target, name in enumerate(values):
            if name not in concepts:
                continue
            with torch.no_grad():
                edited = decode_images(vae, starts[name] + LANDING_ALPHA * concepts[name]["vector"])
                colored, _ = apply_colorizer(colorizer, edited, exact)
                verdict = judge(colored.flatten(1)).argmax(1)
            rates[name] = (verdict == target).float().mean().item()
    return rates


def _caption(name: str, facts: dict) -> str:
    landing = f" · edits land {100 * facts['landing_rate']:.0f}%" if "landing_rate" in facts else ""
    auc = "n/a (no tagged test faces)" if facts["test_auc"] is None else f"{facts['test_auc']:.2f}"
    return f"{name}: test AUC {auc} · consistency {facts['edit_consistency']:.2f}{landing} · columns α = -2 … 3"


def run(params: ConceptParams, inputs: dict[str, Path], out_dir: Path, context: StageContext) -> dict:
    prepared = inputs["prepare"]
    labels = prepared_set.labels_file(prepared)
    if labels is None:
        raise StageSkipped("the prepared set has no labels: use `pipeline prepare --labels tags.csv` "
                           "(the embedded faces bring their own)")
    device = resolve_device(context.device)
    vae, vae_config = load_vae(inputs["vae"] / MODEL, device)
    colorizer, colorizer_config = load_colorizer(inputs["colorize"] / MODEL, device)
    train_images, test_images, train, test = open_split(prepared, vae_config.channels, device)
    masks = read_tags(labels)
    with torch.no_grad():  # (n, Z) codes of each split, encoded a slice at a time
        mu_train, mu_test = encode_means(vae, train_images), encode_means(vae, test_images)

    concepts, starts = {}, {}
    for name, mask in sorted(masks.items()):
        tagged_train, tagged_test = mask[train], mask[test]
        if tagged_train.sum() < params.min_count or (~tagged_train).sum() == 0:
            continue
        vector = mu_train[torch.from_numpy(tagged_train)].mean(0) - mu_train[torch.from_numpy(~tagged_train)].mean(0)
        projection = (mu_test @ vector).cpu().numpy()
        auc = roc_auc(projection, tagged_test) if 0 < tagged_test.sum() < len(test) else None  # JSON null
        start = mu_test[torch.from_numpy(~tagged_test)][:params.rows]
        with torch.no_grad():
            edits = decode_images(vae, (start[:, None] + torch.tensor(ALPHAS, device=device)[None, :, None] * vector)
                            .flatten(0, 1))
            consistency = edit_consistency(vae, start, vector)
            colored, _ = apply_colorizer(colorizer, edits, colorizer_config.exact_luma)
        stem = file_stem(name)
        save_grid(edits.cpu(), len(ALPHAS), out_dir / f"concept_{stem}.png")
        save_grid(colored.cpu(), len(ALPHAS), out_dir / f"concept_{stem}_color.png")
        concepts[name] = {"vector": vector, "train_tagged": int(tagged_train.sum()),
                          "train_untagged": int((~tagged_train).sum()), "test_tagged": int(tagged_test.sum()),
                          "test_auc": auc, "edit_consistency": consistency, "grid": f"concept_{stem}.png",
                          "grid_color": f"concept_{stem}_color.png"}
        starts[name] = start
    if not concepts:
        raise StageSkipped(f"no tag has at least {params.min_count} tagged training images")

    landing = {}
    if prepared_set.read_info(prepared).embedded:
        shown = train[fitting_rows(len(train), params.seed)]
        landing = landing_rates(concepts, masks, vae, colorizer, colorizer_config.exact_luma,
                                image_rows(prepared, 3, device, shown)[:], shown, starts, params.seed)
    for name, rate in landing.items():
        concepts[name]["landing_rate"] = rate

    names = sorted(concepts)
    np.savez(out_dir / VECTORS, names=np.array(names), vectors=np.stack(
        [concepts[n]["vector"].cpu().numpy() for n in names]), train_tagged=np.array(
        [concepts[n]["train_tagged"] for n in names]))
    table = {n: {k: v for k, v in concepts[n].items() if k != "vector"} for n in names}
    (out_dir / TABLE).write_text(json.dumps(table, indent=1))
    write_figures(out_dir, [Figure(facts["grid_color"], _caption(name, facts)) for name, facts in table.items()])
    aucs = [c["test_auc"] for c in table.values() if c["test_auc"] is not None]
    result = {"concepts": len(names), "mean_test_auc": float(np.mean(aucs)) if aucs else None,
              "mean_edit_consistency": float(np.mean([c["edit_consistency"] for c in table.values()]))}
    if landing:
        result["mean_landing_rate"] = float(np.mean(list(landing.values())))
    auc_text = f"{result['mean_test_auc']:.2f}" if aucs else "n/a"
    result["headline"] = (f"{len(names)} concepts, mean test AUC {auc_text}, mean edit "
                          f"consistency {result['mean_edit_consistency']:.2f}"
                          + (f", edits land {100 * result['mean_landing_rate']:.0f}% of the time"
                             if landing else ""))
    return result


def edit_picture(picture: Path, inputs: dict[str, Path], edits: list[tuple[str, float]], output: Path,
                 device_name: str) -> None:
    """Write a strip input | reconstruction | edited gray | edited color for a user's own picture.

    The picture goes through exactly what `prepare` does to every image (centre square, crop, resize, luma), so
    the VAE sees it as it saw its training set. `inputs` holds the prepare, vae, colorize and concepts entries.
    """
    device = resolve_device(device_name)
    saved = np.load(inputs["concepts"] / VECTORS, allow_pickle=False)
    vectors = dict(zip(saved["names"].tolist(), saved["vectors"]))
    unknown = [name for name, _ in edits if name not in vectors]
    if unknown:
        raise StageError(f"unknown concept {', '.join(unknown)}: available: {', '.join(sorted(vectors))}")
    prepared = prepared_set.read_info(inputs["prepare"])
    try:
        pixels = luma_uint8(decode_file(picture, prepared.size, prepared.crop))
    except SourceError as error:
        raise StageError(str(error)) from None
    vae, _ = load_vae(inputs["vae"] / MODEL, device)
    colorizer, config = load_colorizer(inputs["colorize"] / MODEL, device)
    gray = torch.from_numpy(pixels.astype(np.float32) / 255).to(device)[None, None]  # (1, 1, S, S)
    with torch.no_grad():
        mu = vae.encode(gray)[0]
        shift = sum(amount * torch.from_numpy(vectors[name]).to(device) for name, amount in edits)
        reconstruction, edited = decode_images(vae, torch.cat([mu, mu + shift]))
        colored, _ = apply_colorizer(colorizer, edited[None], config.exact_luma)
    panels = torch.stack([gray[0].expand(3, -1, -1), reconstruction.expand(3, -1, -1),
                          edited.expand(3, -1, -1), colored[0]])
    save_grid(panels.cpu(), 4, output)
