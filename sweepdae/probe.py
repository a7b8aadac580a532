"""The cell's probes: frozen encoder features at a fixed t (cached), linear probe, kNN, and reference baselines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sweepdae.recipe import Recipe, probe_depth

FEATURES = "features.pt"


def encoder_feature_fn(recipe: Recipe, model: Any, tokenizer: Any, *, depth: int, seed: int = 0
                       ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """x in [-1, 1] -> pooled tokens after block `depth`, input at t = probe.t (paper Sec. 4: clean input, t = 10).

    Class-conditional models get the null label, so the probe never sees the true class through the input.
    """
    from sweepdae.noise import create_schedule
    from sweepdae.objectives import make_model_input

    schedule = create_schedule(recipe.noise.schedule.value, recipe.noise.num_steps)
    gen: dict[str, torch.Generator] = {}

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z0 = tokenizer.encode(x)  # [B, N, d]
        t = torch.full((x.shape[0],), recipe.probe.t, device=x.device, dtype=torch.long)
        if recipe.probe.noisy_input:
            g = gen.setdefault("g", torch.Generator(device=x.device).manual_seed(seed))
            noise = torch.randn(z0.shape, device=x.device, generator=g)
        else:
            noise = torch.zeros_like(z0)
        xt = schedule.add_noise(z0, t, noise)
        inp = make_model_input(xt, tokenizer=tokenizer, objective=recipe.objective)
        return model.features(inp, t, None, depth=depth)  # [B, width]; y=None: the null class

    return fn


def probe_cell(recipe: Recipe, *, model: Any, tokenizer: Any, train: tuple[torch.Tensor, torch.Tensor] | Any,
               test: tuple[torch.Tensor, torch.Tensor] | Any, num_classes: int, device: torch.device, run_dir: Path,
               events: Callable[..., None]) -> dict[str, float]:
    """Linear probe (MAE protocol) and kNN on the cell's encoder; reference baselines when probe.baselines."""
    from sweepdae.eval import extract_features, knn_probe, linear_probe, linear_probe_augmented

    depth = probe_depth(recipe)
    fn = encoder_feature_fn(recipe, model, tokenizer, depth=depth, seed=recipe.seed)
    pc = recipe.probe
    batch = 512
    out: dict[str, float] = {}
    cache = run_dir / FEATURES
    feats = None
    if cache.exists():
        try:
            feats = torch.load(cache, map_location="cpu")
        except Exception:
            feats = None
    streamed = not isinstance(train, tuple)
    if feats is None:
        with torch.no_grad():
            if streamed:
                tr_f, tr_y = stream_features(fn, train, batch_size=batch, device=device)
                te_f, te_y = stream_features(fn, test, batch_size=batch, device=device)
            else:
                tr_f, tr_y = extract_features(fn, train[0], train[1], batch_size=batch, device=device)
                te_f, te_y = extract_features(fn, test[0], test[1], batch_size=batch, device=device)
        feats = {"train": (tr_f, tr_y), "test": (te_f, te_y), "depth": depth}
        from sweepdae.utils import atomic_write

        atomic_write(cache, lambda f: torch.save(feats, f))
    (tr_f, tr_y), (te_f, te_y) = feats["train"], feats["test"]
    def progress(epoch: int, epochs: int, loss: float) -> None:
        events(phase="probe", probe_epoch=epoch, probe_epochs=epochs, probe_loss=loss)

    if pc.augment and streamed:
        from sweepdae.errors import RecipeError

        raise RecipeError("probe.augment recomputes features of in-memory sets only; streamed (imagefolder) sets "
                          "use cached center-crop features")
    if pc.augment:  # MAE's probe augmentation (RandomResizedCrop 0.08-1 + flip), features recomputed per epoch
        out.update(linear_probe_augmented(fn, train[0], train[1], test[0], test[1], num_classes=num_classes, cfg=pc,
                                          seed=recipe.seed, device=device, progress=progress))
    else:
        out.update(linear_probe(tr_f, tr_y, te_f, te_y, num_classes=num_classes, cfg=pc, seed=recipe.seed,
                                device=device, progress=progress))
    out.update(knn_probe(tr_f, tr_y, te_f, te_y, k=pc.knn_k, temperature=pc.knn_temperature,
                         num_classes=num_classes))
    if pc.baselines and not streamed:  # raw pixels of a streamed set at full size are not a sensible probe
        out.update(_baselines(recipe, tokenizer=tokenizer, train=train, test=test, num_classes=num_classes,
                              device=device, depth=depth))
    return out


@torch.no_grad()
def stream_features(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], data: Any, *, batch_size: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of a whole streamed split, in order, without holding its images in memory."""
    fs, ys = [], []
    for x, y in data.batches(batch_size, shuffle=False, device=device):
        fs.append(fn(x.float().div_(127.5).sub_(1.0), y).float().cpu())
        ys.append(y.cpu())
    return torch.cat(fs), torch.cat(ys)


def _baselines(recipe: Recipe, *, tokenizer: Any, train: tuple[torch.Tensor, torch.Tensor],
               test: tuple[torch.Tensor, torch.Tensor], num_classes: int, device: torch.device, depth: int
               ) -> dict[str, float]:
    """The same architecture at random init, and raw pixels, under the same probe: what training must beat."""
    from sweepdae.eval import extract_features, linear_probe
    from sweepdae.train import build_model

    torch.manual_seed(recipe.seed + 1)
    rand = build_model(recipe, tokenizer, num_classes).to(device).eval()
    fn = encoder_feature_fn(recipe, rand, tokenizer, depth=depth, seed=recipe.seed)
    with torch.no_grad():
        tr_f, tr_y = extract_features(fn, train[0], train[1], batch_size=512, device=device)
        te_f, te_y = extract_features(fn, test[0], test[1], batch_size=512, device=device)
    r = linear_probe(tr_f, tr_y, te_f, te_y, num_classes=num_classes, cfg=recipe.probe, seed=recipe.seed,
                     device=device)

    def pixels(x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    tr_f, tr_y = extract_features(pixels, train[0], train[1], batch_size=2048, device=device)
    te_f, te_y = extract_features(pixels, test[0], test[1], batch_size=2048, device=device)
    p = linear_probe(tr_f, tr_y, te_f, te_y, num_classes=num_classes, cfg=recipe.probe, seed=recipe.seed,
                     device=device)
    return {"random_init_probe_top1": r["probe_top1"], "raw_pixel_probe_top1": p["probe_top1"]}
