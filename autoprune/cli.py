"""The ``autoprune`` command line. Every user error is one line on stderr and a non-zero exit."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from autoprune import devices
from autoprune.errors import AutopruneError
from autoprune.searching.storage import RunDir

EXIT_USAGE = 2


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--threads", type=int, default=default_threads(), help="torch threads (default: CPUs available)")
    p.add_argument("--seed", type=int, default=0)


def _data_root(arg: str | None) -> str | None:
    return arg or os.environ.get("AUTOPRUNE_DATA")


def cmd_train_base(args: argparse.Namespace) -> None:
    import torch

    from autoprune.data import DataSpec, load_data
    from autoprune.measure.metrics import torch_threads
    from autoprune.models import ModelSpec, build_model
    from autoprune.pruning import checkpoint
    from autoprune.tasks.training import TrainConfig, evaluate, train

    data = load_data(DataSpec(args.dataset, _data_root(args.data_root), args.val_fraction, args.seed,
                              args.image_size, args.download, args.max_train_samples))
    spec = ModelSpec(args.model, data.num_classes, data.input_shape[0])
    device = devices.resolve(args.device)
    torch.manual_seed(args.seed)
    model = build_model(spec)
    loader = data.loader("train", args.batch_size, shuffle=True, augment=True, seed=args.seed, device=device)
    val = data.loader("val", 256, device=device)
    print(f"training {args.model} on {args.dataset}: {data.samples('train')} train / {data.samples('val')} val images, "
          f"{args.epochs} epochs, device {device}, {args.threads} threads")
    start = time.perf_counter()

    def log(epoch: int, loss: float) -> None:
        print(f"  epoch {epoch:3d}  loss {loss:.4f}  val_accuracy {evaluate(model, val, device):.4f}", flush=True)
        model.train()

    with torch_threads(args.threads):
        train(model, loader, TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed), device=device, on_epoch=log)
        metrics = {"val_accuracy": evaluate(model, val, device),
                   "test_accuracy": evaluate(model, data.loader("test", 256, device=device), device),
                   "epochs": args.epochs, "train_seconds": round(time.perf_counter() - start, 1)}
    checkpoint.save(checkpoint.from_model(model, spec, data.spec, data.input_shape, data.preprocess(), metrics),
                    args.out)
    print(f"saved {args.out}: val_accuracy {metrics['val_accuracy']:.4f}, test_accuracy {metrics['test_accuracy']:.4f}")


def cmd_groups(args: argparse.Namespace) -> None:
    from autoprune.pruning import checkpoint
    from autoprune.pruning.policy import Policy, discover

    ckpt = checkpoint.load(args.base)
    model = ckpt.build(args.base)
    groups = discover(model, ckpt.example_input)
    print(f"{'group':32s} {'channels':>8s} {'MACs share':>10s}  members")
    for g in groups:
        print(f"{g.name:32s} {g.channels:8d} {g.macs_share:10.3f}  {len(g.members)} layers")
    if args.write_policy:
        Policy.uniform(groups, args.ratio, criterion=args.criterion).save(args.write_policy)
        print(f"wrote {args.write_policy}: ratio {args.ratio} for every group, criterion {args.criterion}")


def cmd_prune(args: argparse.Namespace) -> None:
    from autoprune.data import load_data
    from autoprune.pruning import checkpoint
    from autoprune.pruning.policy import Policy
    from autoprune.searching.trial import TrialSettings, run_trial
    from autoprune.tasks.classification import ClassificationTask, Recipe

    timings: dict[str, float] = {}
    start = time.perf_counter()
    policy = Policy.load(args.policy)
    base = checkpoint.load(args.base)
    model = base.build(args.base)
    data_spec = base.data_spec
    if data_spec.factory is None and (args.data_root or (data_spec.dataset != "embedded" and data_spec.root is None)):
        data_spec = type(data_spec)(**{**data_spec.to_dict(), "root": _data_root(args.data_root)})
    data = load_data(data_spec)
    timings["load"] = round(time.perf_counter() - start, 3)
    device = devices.resolve(args.device)
    settings = TrialSettings(finetune_epochs=args.finetune_epochs, kd=args.kd, steps=args.steps,
                             latency_batch_size=args.latency_batch_size, threads=args.threads,
                             device=device, latency_device=device, seed=args.seed)
    task = ClassificationTask(data, Recipe(lr=args.lr, batch_size=args.batch_size, seed=args.seed))
    print(f"pruning {base.model_spec.arch} with criterion '{policy.criterion}' "
          f"({'iterative, %d steps' % args.steps if args.steps > 1 else 'one-shot'}), "
          f"fine-tuning {args.finetune_epochs} epochs{' with KD' if args.kd else ''}")
    result = run_trial(model, task, policy, settings,
                       on_epoch=lambda e, m, *_: print(f"  fine-tune epoch {e}: val_accuracy {m['val_accuracy']:.4f}",
                                                  flush=True))
    timings.update(result.seconds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint.from_model(result.model, base.model_spec, data_spec, data.input_shape, data.preprocess(),
                                 result.pruned)
    with_save = time.perf_counter()
    checkpoint.save(ckpt, out / "pruned.pt")
    policy.save(out / "policy.json")
    timings["save"] = round(time.perf_counter() - with_save, 3)
    report = {**result.to_dict(), "seconds": timings, "policy": policy.to_dict(),
              "settings": {**settings.to_dict(), **task.describe()}}
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_comparison(report))
    print(f"wrote {out / 'pruned.pt'}, {out / 'metrics.json'}, {out / 'policy.json'}")


def _same_run_dir(a: str, b: str) -> bool:
    """Whether two run directory names (paths or filesystem URIs) name the same directory."""
    ra, rb = RunDir(a), RunDir(b)
    return ra.path == rb.path if ra.is_local and rb.is_local else ra.uri == rb.uri


def cmd_search(args: argparse.Namespace) -> None:
    from autoprune.config import load_config
    from autoprune.searching.controller import check_resumable, run_search, summary_table

    if isinstance(args.resume, str):  # --resume RUN_DIR (a path or a filesystem URI, like --out)
        if args.out and not _same_run_dir(args.out, args.resume):
            raise AutopruneError(f"--resume {args.resume} and --out {args.out} name different run directories")
        args.out = args.resume
    if args.resume and not args.out:
        raise AutopruneError("--resume needs the run directory: --resume RUN_DIR")
    if args.config is None and not args.resume:
        raise AutopruneError("search needs a CONFIG file (e.g. search_spaces/resnet20_fashionmnist.yaml)")
    if args.resume:
        check_resumable(args.out)
    if args.config:
        config = load_config(args.config, args.set)
    else:
        with RunDir(args.out).local_path("config.yaml") as saved:
            config = load_config(saved, args.set)
    run_dir = args.out or str(Path("runs") / f"{config['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
    summary = run_search(config, run_dir, resume=bool(args.resume), echo=lambda m: print(m, flush=True))
    stage0 = f" (and {summary.stage0} stage-0 evaluations)" if summary.stage0 else ""
    print(f"\n{summary.finished} trials finished{stage0}, {summary.failed} failed; "
          f"Pareto front: {len(summary.front.rows)} trials, hypervolume {summary.front.hypervolume:.4f} (vs base)")
    if summary.front.rows:
        print(summary_table(summary.run_dir))
    run = summary.run_dir
    print(f"results: {run.display('trials.parquet')}\nfront:   {run.display('front.parquet')}\n"
          f"plot:    {run.display('pareto.png')}")
    if summary.finished and not summary.front.rows:
        raise AutopruneError(f"no trial met every constraint ({'; '.join(config['constraints'])}): the front is "
                             f"empty; relax the constraints or widen the search space")
    if not summary.finished and summary.budget_reached:
        raise AutopruneError(f"the time budget ({config['time_budget_s']:g} s, time_budget_s) ended the search before "
                             f"any fine-tuned trial finished ({summary.stage0} stage-0 evaluations): raise it, or "
                             f"--resume {run.display('')} to go on")
    if not summary.finished:
        raise AutopruneError(f"no trial finished ({summary.failed} failed): see the 'error' column of "
                             f"{run.display('trials.parquet')}")


def cmd_space(args: argparse.Namespace) -> None:
    from autoprune.config import load_config
    from autoprune.searching.controller import space_command

    space_command(load_config(args.config, args.set), lambda m: print(m, flush=True))


def cmd_latency_table(args: argparse.Namespace) -> None:
    from autoprune.config import load_config
    from autoprune.searching.controller import latency_table_command

    latency_table_command(load_config(args.config, args.set), args.out, lambda m: print(m, flush=True))


def cmd_submit(args: argparse.Namespace) -> None:
    from autoprune.searching import jobs

    job_id = jobs.submit(args.config, args.address, args.working_dir, args.out, args.set)
    print(job_id)
    print(f"follow it with: autoprune status {job_id} --address {jobs.resolve_address(args.address)}"
          f"  |  autoprune logs {job_id} --follow", file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> None:
    from autoprune.searching import jobs

    print(jobs.status(args.job_id, args.address))


def cmd_logs(args: argparse.Namespace) -> None:
    from autoprune.searching import jobs

    jobs.logs(args.job_id, args.address, args.follow, lambda chunk: print(chunk, end="", flush=True))


def cmd_front(args: argparse.Namespace) -> None:
    from autoprune.searching.front import format_rows, write_front
    from autoprune.searching.results import run_metric

    run_dir = RunDir(args.run_dir)
    if not run_dir.is_dir():
        raise AutopruneError(f"run directory '{args.run_dir}' does not exist")
    front = write_front(run_dir)
    print(f"Pareto front of {run_dir}: {len(front.rows)} trials, hypervolume {front.hypervolume:.4f} (vs base)")
    print(format_rows(front.rows, run_metric(run_dir).name))


def cmd_export(args: argparse.Namespace) -> None:
    from autoprune.deploy.export import export_trial, pick_trial

    run_dir = RunDir(args.run_dir)
    if not run_dir.is_dir():
        raise AutopruneError(f"run directory '{args.run_dir}' does not exist")
    row = pick_trial(run_dir, args.pick, args.max_latency_ms, args.metric_bound, args.max_size_mb)
    m = export_trial(run_dir, row, args.out, deploy_options(run_dir, args), echo=lambda line: print(line, flush=True))
    test = f"test_{m['metric']}"
    print(f"exported trial {m['trial_id']} ({args.pick}) to {args.out}: {test} {m[test]:.4f} "
          f"(base {m['base'][test]:.4f}), latency {m['latency_ms']:.3f} ms "
          f"(base {m['base']['latency_ms']:.3f}), {m['params']:,} params (base {m['base']['params']:,})")
    print(format_runtimes(m))
    print(f"files: {', '.join(sorted(p.name for p in Path(args.out).iterdir()))}")


def deploy_options(run_dir: RunDir, args: argparse.Namespace) -> Any:
    """The run's ``deploy.*`` keys with the command line's deploy flags over them."""
    from dataclasses import replace

    from autoprune.deploy.artefacts import DeployOptions
    from autoprune.deploy.export import run_config

    int8 = False if args.onnx is False and args.int8 is None else args.int8  # --no-onnx: nothing to quantize
    flags = {"onnx": args.onnx, "int8": int8, "share_bits": args.share_bits, "qat_epochs": args.qat_epochs}
    options = DeployOptions.from_config(run_config(run_dir))
    return replace(options, **{k: v for k, v in flags.items() if v is not None})


def format_runtimes(m: dict[str, Any]) -> str:
    """One line per runtime of an export: test metric, size, latency, speedup against the base in torch."""
    test, lines = f"test_{m['metric']}", []
    for runtime, r in m["runtimes"].items():
        if runtime != "timing":
            score = f"{r[test]:.4f}" if r[test] is not None else "-"
            lines.append(f"  {runtime:<12} {test} {score}  {r['size_bytes']:>11,} bytes  "
                         f"{r['latency_ms']:.3f} ms  {r['speedup_vs_base_torch']:.2f}x vs the base in torch")
    shared = m.get("weight_sharing")
    if shared and "error" not in shared:
        lines.append(f"  shared {shared['bits']}-bit weights: {test} {shared[test]:.4f}, {shared['size_bytes']:,} bytes")
    return "runtimes (CPU, interleaved in one process):\n" + "\n".join(lines)


def cmd_finalize(args: argparse.Namespace) -> None:
    from autoprune.deploy.finalize import finalize

    start = time.perf_counter()
    run_dir = RunDir(args.run_dir)
    if not run_dir.is_dir():
        raise AutopruneError(f"run directory '{args.run_dir}' does not exist")
    m = finalize(run_dir, args.pick, args.epochs, args.kd, args.out, deploy=deploy_options(run_dir, args),
                 against=args.against, echo=lambda line: print(line, flush=True))
    b, f = m["base"], m["final"]
    print(f"finalized trial {m['trial_id']} ({args.pick}) in {time.perf_counter() - start:.0f} s -> {args.out}")
    test = f"test_{m['metric']}"
    print(f"test {m['metric']} {f[test]:.4f} (base {b[test]:.4f}), latency in {m['latency']['runtime']} "
          f"{f['latency_ms']:.3f} ms (base {b['latency_ms']:.3f} ms), speedup {f['speedup']:.2f}x")
    if "against_uniform" in m:
        u = m["against_uniform"]
        print(f"uniform {u['ratio']:g}, finalized the same way: test {m['metric']} {u[test]:.4f} at "
              f"{u['latency_ms']:.3f} ms ({u['speedup']:.2f}x); the search's pick {u[test + '_difference']:+.4f}")
    print(format_runtimes(m))
    print(f"files: {', '.join(sorted(p.name for p in Path(args.out).iterdir()))}; model card: "
          f"{Path(args.out) / 'README.md'}")


def add_deploy_flags(p: argparse.ArgumentParser) -> None:
    """export's and finalize's flags over the run's ``deploy.*`` config keys."""
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                   help="write model.onnx, checked in onnxruntime (default: the run's deploy.onnx, on; "
                        "--no-onnx implies --no-int8)")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                   help="write model.int8.onnx, quantized by onnxruntime (default: the run's deploy.int8, on)")
    p.add_argument("--share-bits", type=int, choices=range(4, 9), metavar="{4..8}",
                   help="also write model.shared.npz: each layer's weights as 2**BITS shared values")
    p.add_argument("--qat-epochs", type=float, help="quantization-aware fine-tune when int8 loses more than "
                   "deploy.int8_max_drop (default: the run's deploy.qat_epochs; 0: never)")


def format_comparison(report: dict[str, Any]) -> str:
    """Base vs pruned as an aligned table."""
    b, p = report["base"], report["pruned"]
    rows = [("val accuracy", f"{b['val_accuracy']:.4f}", f"{p['val_accuracy']:.4f}", ""),
            ("test accuracy", f"{b['test_accuracy']:.4f}", f"{p['test_accuracy']:.4f}", ""),
            ("params", f"{b['params']:,}", f"{p['params']:,}", f"{p['params'] / b['params']:.2f}x"),
            ("size (KB)", f"{b['size_bytes'] / 1024:.1f}", f"{p['size_bytes'] / 1024:.1f}",
             f"{p['size_bytes'] / b['size_bytes']:.2f}x"),
            ("MACs", f"{b['macs']:,}", f"{p['macs']:,}", f"{p['macs'] / b['macs']:.2f}x"),
            ("latency (ms)", f"{b['latency_ms']:.3f} ±{b['latency_iqr_ms']:.3f}",
             f"{p['latency_ms']:.3f} ±{p['latency_iqr_ms']:.3f}", f"speedup {report['speedup']:.2f}x")]
    lines = [f"{'':16s}{'base':>22s}{'pruned':>22s}  ratio"]
    lines += [f"{name:16s}{bv:>22s}{pv:>22s}  {r}" for name, bv, pv, r in rows]
    s = report["seconds"]
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in s.items()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoprune", description="Search per-layer structural pruning policies.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-base", help="train a base model and save its checkpoint")
    p.add_argument("--model", default="resnet20", help="resnet20|32|56, vgg11_bn, vgg16_bn, torchvision:NAME, pkg.mod:fn")
    p.add_argument("--dataset", default="embedded", help="embedded, fashionmnist, mnist, cifar10, imagefolder")
    p.add_argument("--data-root", help="dataset root in torchvision's layout (default: $AUTOPRUNE_DATA)")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset")
    p.add_argument("--image-size", type=int, default=32, help="ImageFolder images are resized to this")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-train-samples", type=int, help="train on the first N training images only")
    p.add_argument("--out", required=True, help="checkpoint path to write")
    _add_runtime(p)
    p.set_defaults(func=cmd_train_base)

    p = sub.add_parser("groups", help="list a model's prunable groups (the keys of a policy)")
    p.add_argument("--base", required=True, help="base checkpoint")
    p.add_argument("--write-policy", metavar="PATH", help="also write a uniform policy over every group")
    p.add_argument("--ratio", type=float, default=0.5, help="ratio for --write-policy")
    p.add_argument("--criterion", default="l1", help="criterion for --write-policy")
    p.set_defaults(func=cmd_groups)

    p = sub.add_parser("prune", help="prune a base checkpoint to one policy, fine-tune and measure it")
    p.add_argument("--base", required=True, help="base checkpoint from 'autoprune train-base'")
    p.add_argument("--policy", required=True, help="policy JSON")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--finetune-epochs", type=float, default=1.0)
    p.add_argument("--kd", action="store_true", help="distil from the unpruned model while fine-tuning")
    p.add_argument("--steps", type=int, default=1, help="iterative pruning in K steps (default: one-shot)")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--latency-batch-size", type=int, default=32)
    p.add_argument("--data-root", help="dataset root, if not the one recorded in the checkpoint")
    _add_runtime(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("search", help="search pruning policies with Ray Tune")
    p.add_argument("config", nargs="?", help="search space YAML (search_spaces/*.yaml)")
    p.add_argument("--out", help="run directory, a path or a filesystem URI such as s3://bucket/run "
                                 "(default: runs/NAME-TIMESTAMP)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue an interrupted search (a path or a filesystem URI) without re-running finished "
                        "trials")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("space", help="what a search space can reach: smallest, midpoint and largest models measured")
    p.add_argument("config", help="search space YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_space)

    p = sub.add_parser("latency-table", help="time every layer at the space's ratios on the latency target "
                                             "(NetAdapt lookup table) and write it as JSON")
    p.add_argument("config", help="search space YAML")
    p.add_argument("--out", required=True, help="table path (then: --set latency.table=PATH)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_latency_table)

    p = sub.add_parser("export", help="export a trial of a run: policy, weights, torch.export program, card")
    p.add_argument("run_dir")
    p.add_argument("--pick", default="knee", help="knee, best (metric), min-latency, min-size or trial:ID")
    p.add_argument("--max-latency-ms", type=float)
    p.add_argument("--metric-bound", type=float, help="the validation metric at least this (at most, for a metric "
                   "to minimise), e.g. 0.85 for accuracy")
    p.add_argument("--max-size-mb", type=float)
    p.add_argument("--out", required=True, help="export directory")
    add_deploy_flags(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("finalize", help="prune the base to a trial's policy again, fine-tune it fully with "
                                        "distillation and export it")
    p.add_argument("run_dir")
    p.add_argument("--pick", default="knee", help="knee, best (metric), min-latency, min-size or trial:ID")
    p.add_argument("--epochs", type=float, help="fine-tuning epochs (default: the run's finetune.final_epochs)")
    p.add_argument("--kd", action=argparse.BooleanOptionalAction, default=True,
                   help="distil from the base while fine-tuning (default: on)")
    p.add_argument("--out", required=True, help="output directory (everything export writes)")
    p.add_argument("--against", choices=["uniform"], help="also finalize, the same way, the uniform policy measured "
                   "closest to the finalized model's latency, and report the difference")
    add_deploy_flags(p)
    p.set_defaults(func=cmd_finalize)

    p = sub.add_parser("submit", help="submit a search to a Ray cluster as a Ray Job; prints the job id")
    p.add_argument("config")
    p.add_argument("--address", help="job server, e.g. http://HEAD:8265 (default: $RAY_ADDRESS or 127.0.0.1:8265)")
    p.add_argument("--working-dir", help="directory shipped with the job (default: the current one)")
    p.add_argument("--out", help="run directory on shared storage (a shared path or an object-store URI)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_submit)
    for name, func, helptext in (("status", cmd_status, "status of a submitted search"),
                                 ("logs", cmd_logs, "logs of a submitted search")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("job_id")
        p.add_argument("--address", help="job server (default: $RAY_ADDRESS or 127.0.0.1:8265)")
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream until the job ends")
        p.set_defaults(func=func)

    p = sub.add_parser("front", help="print a run's Pareto front")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_front)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except AutopruneError as e:
        print(f"autoprune: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("autoprune: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # never a traceback for the user; AUTOPRUNE_DEBUG=1 shows it
        if os.environ.get("AUTOPRUNE_DEBUG"):
            raise
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"autoprune: internal error: {type(e).__name__}: {detail} (AUTOPRUNE_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
