"""How few recalibration batches and proxy images keep stage 0's ranking: Spearman against 40 batches and 1,000 images.

    .venv/bin/python bench/stage0_budget.py [--candidates 40] [--config search_spaces/resnet20_fashionmnist.yaml]

Random candidates of the config's space (every ratio drawn from its grid, each criterion) are scored at stage 0 by
the search's own evaluator, once with the reference budget (40 batch-norm recalibration batches of 64 training images,
the proxy metric on 1,000 validation images, or the whole validation split when it is smaller), then with each
smaller budget. Printed: the Spearman rank correlation of each budget's proxy with the reference's, and its seconds
per candidate on one thread; the cheapest budget with Spearman >= 0.9 is what ``searcher.proxy_batches`` and
``searcher.proxy_samples`` should be.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import replace

from scipy.stats import spearmanr

from autoprune.config import load_config
from autoprune.pruning.policy import discover
from autoprune.searching import controller
from autoprune.searching.space import SearchSpace
from autoprune.searching.stage0 import Stage0Evaluator
from autoprune.searching.stage0.attach import stage0_settings
from autoprune.tasks.classification import ClassificationTask

BATCHES = (2, 4, 6, 10, 20)
SAMPLES = (250, 500, 1000)


def scores(evaluator: Stage0Evaluator, points: list[dict]) -> tuple[list[float], float]:
    start = time.perf_counter()
    values = []
    for p in points:
        scored = evaluator.score(p)
        values.append(scored.metrics["proxy_accuracy"] if scored.error is None else float("nan"))
    return values, (time.perf_counter() - start) / len(points)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="search_spaces/resnet20_fashionmnist.yaml")
    p.add_argument("--candidates", type=int, default=40)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    config = load_config(args.config, args.set)
    data = controller.classification_data(config)
    task = controller.build_task(config, data)
    assert isinstance(task, ClassificationTask), "the study reads the built-in classification task's proxy split"
    base, _ = controller.ensure_base(config, data, task, print)
    model = base.build()
    space = SearchSpace.from_config(config, discover(model, base.example_input, config["space.ignore"]))
    rng = random.Random(0)
    points = [{**{q.group: rng.choice(q.grid()) for q in space.params}, "criterion": rng.choice(space.criteria)}
              for _ in range(args.candidates)]
    settings = replace(stage0_settings(config, 1), threads=1)

    def evaluator(batches: int, samples: int) -> Stage0Evaluator:
        return Stage0Evaluator(model, ClassificationTask(task.data, replace(task.recipe, proxy_samples=samples)), space,
                               replace(settings, bn_batches=batches))

    val = task.data.samples("val")
    reference, ref_s = scores(evaluator(40, 1000), points)
    print(f"{args.candidates} random candidates; reference: 40 batches, {min(1000, val)} images "
          f"({ref_s:.2f} s per candidate)")
    print(f"{'batches':>7} {'images':>6} {'spearman':>8} {'s/cand':>7}")
    for samples in SAMPLES:
        for batches in BATCHES:
            values, seconds = scores(evaluator(batches, samples), points)
            rho = spearmanr(values, reference).statistic
            print(f"{batches:>7} {min(samples, val):>6} {rho:>8.3f} {seconds:>7.3f}", flush=True)
    print(f"reference mean proxy accuracy {statistics.fmean(reference):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
