"""Train the denoising autoencoder of ``denoise.py`` with your own loop and save its weights (a state_dict), the
trained model autoprune then prunes (``base.weights`` in ``denoise.yaml``).

    PYTHONPATH=examples/denoising .venv/bin/python examples/denoising/train_denoiser.py --out runs/denoise/weights.pt
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from denoise import DenoisingTask, autoencoder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/denoise/weights.pt")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    task, model = DenoisingTask(), autoencoder()
    print(f"before training: val PSNR {task.evaluate(model, 'val'):.2f} dB")
    task.finetune(model, args.epochs, on_epoch=lambda e, logs: print(
        f"epoch {e}: loss {logs['loss']:.5f}, val PSNR {task.evaluate(model, 'val'):.2f} dB", flush=True))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
