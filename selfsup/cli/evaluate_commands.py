"""`selfsup eval knn|linear` (and, through `protocol_commands`, finetune|svm|segment|all|plot) and
`selfsup export`: measuring and exporting a pretrained backbone. Every measurement is stored in the
run's eval.json and TensorBoard (`trainer.protocols`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from selfsup.cli import protocol_commands
from selfsup.cli.measurements import add_evaluation_arguments, measure


def _measured_on(count: int, source: str, test_data: str | None) -> str:
    """"40 val" or "4800 test-set" (with the test set's path and splits) for the evaluation summaries."""
    return f"{count} test-set [{source}]" if test_data else f"{count} {source}"


def _eval_knn(args: argparse.Namespace) -> int:
    result = measure(args, "knn", {"k": args.k, "temperature": args.temperature}, feature_batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"kNN ({result['weights']}, k={result['k']}, T={result['temperature']}): "
              f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
              f"({_measured_on(result['query_samples'], result['query_split'], args.test_data)} queries, "
              f"{result['bank_samples']} in the bank; "
              f"effective rank of the bank features {result['effective_rank']:.1f})")
    return 0


def _eval_linear(args: argparse.Namespace) -> int:
    result = measure(args, "linear", {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                                      "weight_decay": args.weight_decay})
    if args.json:
        print(json.dumps(result))
    else:
        print(f"linear ({result['weights']}, {result['epochs']} epochs, lr {result['lr']}): "
              f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  (train top-1 {result['train_top1']:.2f}%; "
              f"{_measured_on(result['eval_samples'], result['eval_split'], args.test_data)} samples, "
              f"{result['train_samples']} to train on)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from selfsup.trainer.export import export_backbone
    from selfsup.trainer.resume import find_checkpoint

    checkpoint = find_checkpoint(args.checkpoint)
    if args.format == "state_dict":
        sidecar = export_backbone(checkpoint, args.output, weights=args.weights)
        print(f"exported {sidecar['backbone']} ({sidecar['weights']} weights, step {sidecar['step']}) to "
              f"{args.output}; build it with {Path(args.output).with_suffix('.json')}")
        return 0
    from selfsup.trainer.export_formats import export_onnx, export_timm

    if args.format == "timm":
        config = export_timm(checkpoint, args.output, weights=args.weights)
        print(f"exported {config['architecture']} ({args.weights} weights) to {args.output}/ (config.json, "
              f"model.safetensors); load it with timm.create_model(\"local-dir:{args.output}\", pretrained=True)")
        return 0
    summary = export_onnx(checkpoint, args.output, weights=args.weights, image_size=args.image_size)
    checked = ("not checked (onnxruntime is not installed)" if summary["max_difference"] is None else
               f"onnxruntime agrees with PyTorch to {summary['max_difference']:.1e}")
    shape = summary["input_shape"]
    print(f"exported {summary['backbone']} ({args.weights} weights) to {args.output}: input images "
          f"(batch, {shape[1]}, {shape[2]}, {shape[3]}), output features (batch, {summary['feature_dim']}); {checked}")
    return 0


def add_commands(commands) -> None:
    evaluate = commands.add_parser("eval", help="evaluate a pretrained backbone")
    protocols = evaluate.add_subparsers(dest="protocol", required=True)
    knn = protocols.add_parser("knn", help="weighted kNN accuracy on a labeled dataset")
    add_evaluation_arguments(knn)
    knn.add_argument("--k", type=int, default=None)
    knn.add_argument("--temperature", type=float, default=None)
    knn.set_defaults(run=_eval_knn)
    linear = protocols.add_parser("linear", help="linear classifier on frozen features (top-1/top-5)")
    add_evaluation_arguments(linear, batch_size=256, batch_size_help="classifier batch size (default 256)")
    linear.add_argument("--epochs", type=int, default=100, help="epochs over the cached features (default 100)")
    linear.add_argument("--lr", type=float, default=0.1, help="SGD learning rate, cosine to 0 (default 0.1)")
    linear.add_argument("--weight-decay", type=float, default=0.0)
    linear.set_defaults(run=_eval_linear)
    protocol_commands.add_commands(protocols)

    export = commands.add_parser("export", help="write a pretrained backbone as a state_dict, a timm folder or ONNX")
    export.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint")
    export.add_argument("--output", required=True,
                        help="state_dict: the file to write, e.g. backbone.pt (+ backbone.json); timm: a folder "
                             "(config.json + model.safetensors); onnx: the .onnx file")
    export.add_argument("--format", choices=("state_dict", "timm", "onnx"), default="state_dict",
                        help="state_dict (default): torch.save of the backbone's weights; timm: a folder that "
                             "timm.create_model('local-dir:FOLDER', pretrained=True) loads; onnx: the backbone's "
                             "graph, checked against PyTorch with onnxruntime")
    export.add_argument("--image-size", type=int, default=None,
                        help="onnx: the input size the graph is traced at (default: the run's data.image_size)")
    export.add_argument("--weights", choices=("student", "teacher"), default="student",
                        help="the online backbone, or the momentum teacher/target where the method has one")
    export.set_defaults(run=_export)
