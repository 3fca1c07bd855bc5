"""Rebuild the base model shipped in the package: the default space's ResNet-20 on the embedded Fashion-MNIST subset,
trained exactly as ``autoprune search`` trains a missing base (8 epochs, lr 0.1, seed 0, in a Ray task).

    python -m autoprune.searching.make_default_base [--config search_spaces/resnet20_fashionmnist.yaml]

A search whose base checkpoint is missing uses the shipped one when its model, data and training recipe are the
same (``autoprune.searching.base_training.packaged_base``), instead of training for a minute or two first.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from autoprune.searching.base_training import PACKAGED_BASES


def main() -> None:
    from autoprune.config import load_config
    from autoprune.searching import controller

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/resnet20_fashionmnist.yaml")
    args = parser.parse_args()
    config = load_config(args.config)
    data = controller.classification_data(config)
    assert data is not None, "the shipped base is for the built-in classification task"
    out = PACKAGED_BASES / f"{config['model']}_{data.spec.dataset}.pt"
    out.unlink(missing_ok=True)  # trained afresh, never copied from the previous shipped base
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(args.config, [f"base.checkpoint={Path(tmp) / out.name}"])
        _, path = controller.ensure_base(config, data, controller.build_task(config, data), print)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(path.read_bytes())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
