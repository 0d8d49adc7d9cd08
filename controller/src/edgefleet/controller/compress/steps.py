"""The torch-side steps of a recipe: distill a student, prune it (structured, unstructured) and
fine-tune it, recording what each step measurably did."""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from edgefleet.controller.compress.built import Notify
from edgefleet.controller.compress.data import Dataset
from edgefleet.controller.compress.distill import (
    as_eval,
    mlp_student,
    top1_accuracy,
    train_classifier,
)
from edgefleet.controller.compress.prune import (
    param_count,
    parameter_sparsity,
    prune_structured,
    prune_unstructured_parameters,
    prune_unstructured_torch,
    weight_sparsity,
)
from edgefleet.controller.compress.recipe import DistillConfig, Recipe, parse_student_spec
from edgefleet.controller.compress.sources import TorchSource, run_torch
from edgefleet.controller.errors import CompressionError


def apply_torch_steps(
    source: TorchSource,
    recipe: Recipe,
    *,
    evaluation: Dataset,
    train: Dataset | None,
    student: nn.Module | None,
    notify: Notify,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model to convert (a pruned/distilled copy; the source is untouched) and a summary."""
    names = source.input_names
    summary: dict[str, Any] = {"original_params": param_count(source.module)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree deprecations on deepcopy
        working = as_eval(copy.deepcopy(source.module))
    eager = source.eager
    if distills(recipe, student):
        working = _distill(source, recipe, evaluation, train, student, notify, summary)
        eager = True
    if recipe.structured_ratio > 0:
        notify(f"structured pruning ({recipe.structured_ratio:.0%} of channels)")
        example = tuple(torch.from_numpy(evaluation.inputs[n][:1]) for n in names)
        latency_before = torch_latency_ms(working, example)
        result = prune_structured(working, example, recipe.structured_ratio)
        latency_after = torch_latency_ms(working, example)
        summary["structured_pruning"] = {
            "ratio": recipe.structured_ratio,
            "params_before": result.params_before,
            "params_after": result.params_after,
            "macs_before": result.macs_before,
            "macs_after": result.macs_after,
            "torch_median_ms_before": latency_before,
            "torch_median_ms_after": latency_after,
        }
        if recipe.prune_sparsity == 0 and recipe.finetune_epochs > 0:
            _finetune(working, source, recipe, train, notify, summary)
    if recipe.prune_sparsity > 0:
        notify(f"unstructured pruning to {recipe.prune_sparsity:.0%} sparsity")

        def finetune() -> None:
            _finetune(working, source, recipe, train, notify, summary)

        if eager:
            prune_unstructured_torch(
                working, recipe.prune_sparsity, finetune if recipe.finetune_epochs > 0 else None
            )
        else:
            prune_unstructured_parameters(working, recipe.prune_sparsity)
        summary["unstructured_pruning"] = {
            "target_sparsity": recipe.prune_sparsity,
            "sparsity": model_sparsity(working, eager=eager),
        }
    summary["final_params"] = param_count(working)
    summary["param_ratio"] = summary["original_params"] / max(1, summary["final_params"])
    if evaluation.labels is not None:
        inputs = tuple(evaluation.inputs[n] for n in names)
        summary["original_accuracy"] = top1_accuracy(source.module, inputs, evaluation.labels)
        summary["final_accuracy"] = top1_accuracy(working, inputs, evaluation.labels)
    return as_eval(working), summary


def torch_latency_ms(module: nn.Module, example: tuple[torch.Tensor, ...], runs: int = 30) -> float:
    """Median eager-torch latency of one batch-1 call, single-threaded (artifact runtimes are
    timed separately, in each artifact's report)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        with torch.inference_mode():
            for i in range(runs + 3):
                start = time.perf_counter()
                module(*example)
                if i >= 3:  # warm-up calls are not timed
                    times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times))


def distills(recipe: Recipe, student: nn.Module | None) -> bool:
    return recipe.distill is not None or student is not None or recipe.student_spec is not None


def model_sparsity(module: nn.Module, *, eager: bool) -> float:
    return weight_sparsity(module) if eager else parameter_sparsity(module)


def _distill(
    source: TorchSource,
    recipe: Recipe,
    evaluation: Dataset,
    train: Dataset | None,
    student: nn.Module | None,
    notify: Notify,
    summary: dict[str, Any],
) -> nn.Module:
    config = recipe.distill or DistillConfig()
    names = source.input_names
    if train is None:
        raise CompressionError("distillation needs a transfer set (training data)")
    inputs = tuple(train.inputs[n] for n in names)
    teacher_out = run_torch(source.module, names, {n: train.inputs[n][:1] for n in names})
    classes = int(next(iter(teacher_out.values())).shape[-1])
    if student is None:
        if recipe.student_spec is None:
            raise CompressionError("distillation needs a student module or a student spec")
        if len(names) != 1:
            raise CompressionError("an mlp student spec needs a model with exactly one input")
        features = int(np.prod(train.inputs[names[0]].shape[1:]))
        torch.manual_seed(config.seed)
        student = mlp_student(features, parse_student_spec(recipe.student_spec), classes)
    initial = copy.deepcopy(student)
    notify(f"distilling student ({config.epochs} epochs, T={config.temperature}, a={config.alpha})")
    distilled = train_classifier(
        student,
        inputs,
        train.labels,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
        teacher=source.module,
        config=config,
    )
    record: dict[str, Any] = {
        "config": {"temperature": config.temperature, "alpha": config.alpha,
                   "epochs": config.epochs, "labelled_transfer_set": train.labels is not None},
        "teacher_params": param_count(source.module),
        "student_params": param_count(distilled),
    }  # fmt: skip
    record["param_ratio"] = record["teacher_params"] / max(1, record["student_params"])
    if evaluation.labels is not None:
        eval_inputs = tuple(evaluation.inputs[n] for n in names)
        record["teacher_accuracy"] = top1_accuracy(source.module, eval_inputs, evaluation.labels)
        record["distilled_accuracy"] = top1_accuracy(distilled, eval_inputs, evaluation.labels)
        if config.compare_scratch and train.labels is not None:
            notify("training the same student from scratch (same budget) for comparison")
            scratch = train_classifier(
                initial,
                inputs,
                train.labels,
                epochs=config.epochs,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                seed=config.seed,
            )
            record["scratch_accuracy"] = top1_accuracy(scratch, eval_inputs, evaluation.labels)
    summary["distillation"] = record
    return distilled


def _finetune(
    working: nn.Module,
    source: TorchSource,
    recipe: Recipe,
    train: Dataset | None,
    notify: Notify,
    summary: dict[str, Any],
) -> None:
    if train is None:
        raise CompressionError("fine-tuning needs training data")
    notify(f"fine-tuning ({recipe.finetune_epochs} epochs)")
    teacher = None if train.labels is not None else source.module
    train_classifier(
        working,
        tuple(train.inputs[n] for n in source.input_names),
        train.labels,
        epochs=recipe.finetune_epochs,
        batch_size=64,
        learning_rate=recipe.finetune_learning_rate,
        seed=recipe.seed,
        teacher=teacher,
        config=recipe.distill or DistillConfig(alpha=1.0),
    )
    summary["finetune"] = {"epochs": recipe.finetune_epochs, "labelled": train.labels is not None}
