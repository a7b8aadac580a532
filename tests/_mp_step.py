"""What tests/test_multiprocess.py compares between one process and two: run here under
`accelerate launch --multi_gpu --num_processes 2 tests/_mp_step.py KNOBS_JSON OUT` (gloo on CPU), or called
in-process as `measure(knobs, work)` with one process.

`measure` takes the first optimizer step of a fresh training (its loss averaged over the processes, the weights
after it) and the sharded, gathered evaluation passes: the test split's features under a random-init encoder
(mean- and 2 x 2-pooled) and the augmented linear probe (per-epoch crops, sharded by rows)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch


def measure(knobs: dict[str, Any], work: Path) -> dict[str, Any]:
    from accelerate import Accelerator

    from sweepdae.cell.baselines import random_encoder
    from sweepdae.cell.build import step_seed
    from sweepdae.cell.probing import encoder_feature_fn
    from sweepdae.cell.train import setup_training, train_step
    from sweepdae.data import load_dataset, sample_images
    from sweepdae.eval import linear_probe_augmented_data
    from sweepdae.eval.probe import split_features
    from sweepdae.recipe import probe_depth, recipe_from_flat
    from sweepdae.tokenizers import get_tokenizer

    acc = Accelerator(cpu=True)
    r = recipe_from_flat(knobs)
    train, test = load_dataset(r.data, "train"), load_dataset(r.data, "test")
    tok, _ = get_tokenizer(r.tokenizer, data_key=r.data_key(), images_uint8=sample_images(train, 64)[0],
                           channels=train.channels, image_size=r.data.image_size,
                           cache_dir=work / f"tok{acc.process_index}", seed=0)
    tr = setup_training(r, tokenizer=tok, data=train, accelerator=acc)
    tr.model, tr.opt = acc.prepare(tr.model, tr.opt)
    tr.raw_model = acc.unwrap_model(tr.model)
    before = {k: v.detach().cpu().clone() for k, v in tr.raw_model.state_dict().items()}
    # the step generator train_one_epoch seeds for epoch 0 (the same on every rank)
    gd = torch.Generator().manual_seed(step_seed(r.seed, 0))
    micros = next(iter(tr.source(0, gd)))
    loss = train_step(tr, micros, step=0, gd=gd)
    if acc.num_processes > 1:
        loss = acc.reduce(loss.detach().clone(), reduction="mean")
    enc = random_encoder(r, tok, train.num_classes, adaln_zero=False)
    fn = encoder_feature_fn(r, enc, tok, depth=probe_depth(r), t=10, seed=r.seed)
    feats, labels = split_features(fn, test, batch_size=6, device=torch.device("cpu"), accelerator=acc)
    fn2 = encoder_feature_fn(r, enc, tok, depth=probe_depth(r), t=10, seed=r.seed, pool="2x2")
    quads, _ = split_features(fn2, test, batch_size=6, device=torch.device("cpu"), accelerator=acc)
    probe = linear_probe_augmented_data(fn, train, test, cfg=r.probe, seed=r.seed, feature_batch_size=6,
                                        accelerator=acc)
    return {"loss": float(loss), "params": {k: v.detach().cpu().clone() for k, v in tr.raw_model.state_dict().items()},
            "before": before,
            "rows": sum(m[0].shape[0] for m in micros), "features": feats, "labels": labels, "quadrants": quads,
            "probe": probe, "world": acc.num_processes}


def resume(knobs: dict[str, Any], work: Path) -> dict[str, Any]:
    """A whole training, and the same training stopped on request mid-epoch (after the 8th step: epoch 1, batch
    2 of 6) and resumed from its checkpoint: the final weights (EMA too) of both."""
    from accelerate import Accelerator

    from sweepdae.cell.train import train
    from sweepdae.data import load_dataset, sample_images
    from sweepdae.errors import TrainingError
    from sweepdae.recipe import recipe_from_flat
    from sweepdae.tokenizers import get_tokenizer

    acc = Accelerator(cpu=True)
    r = recipe_from_flat(knobs)
    data = load_dataset(r.data, "train")
    tok, _ = get_tokenizer(r.tokenizer, data_key=r.data_key(), images_uint8=sample_images(data, 64)[0],
                           channels=data.channels, image_size=r.data.image_size,
                           cache_dir=work / f"tok{acc.process_index}", seed=0)

    def run(folder: str, stop: Any = None) -> Any:
        return train(r, tokenizer=tok, data=data, train_dir=work / folder, accelerator=acc,
                     events=lambda **_: None, stop=stop)

    whole = run("whole")
    asked = iter(range(100))  # asked after every step but an epoch's last: the 8th ask is epoch 1, batch 2
    try:
        run("stopped", stop=lambda: next(asked) == 7)
        raise AssertionError("the training did not stop")
    except TrainingError as e:
        assert e.failure_class == "preempted", e
    resumed = run("stopped")

    def weights(state: Any) -> dict[str, torch.Tensor]:
        out = {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}
        if state.ema is not None:
            out.update({f"ema.{k}": v.detach().cpu().clone() for k, v in state.ema.state_dict().items()})
        return out

    return {"whole": weights(whole), "resumed": weights(resumed), "steps": (whole.step, resumed.step),
            "resumed_from": resumed.resumed_from, "world": acc.num_processes}


if __name__ == "__main__":
    knobs, out = json.loads(sys.argv[1]), Path(sys.argv[2])
    got = (resume if sys.argv[3:] == ["resume"] else measure)(knobs, out.parent)
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        torch.save(got, out)
    state.wait_for_everyone()
