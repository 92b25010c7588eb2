"""What every problem folder shares, and nothing problem-specific (that stays in its folder):

    cli.py      one-line CLI errors, checked argument types and input paths, command lines
    files.py    image I/O, atomic files and folders, JSON records and figures, CIFAR-10
    runtime.py  seeding, devices and dtypes, hardware descriptions, progress bars, DDP glue
    runs.py     a training run's folder (resume, log, provenance) and train.py's common options

Every public name is importable from `hw2_utils` itself, as before the split.
"""
from hw2_utils.cli import (CLIError, Number, add_option, check_output_path, clip_score, command_line, error_summary,
                           fraction_below_one, load_torch_file, non_negative_float, non_negative_int, positive_float,
                           positive_int, probability, require_dir, require_file, require_finite, run_cli, seed_int)
from hw2_utils.files import (CIFAR10_CLASSES, IMAGE_EXTENSIONS, atomic_path, ensure_writable_dir, list_images, load_cifar10,
                             markdown_table, missing, open_rgb, output_dir, output_lock, pyplot, read_label_csv,
                             read_record, record_errors, save_figure, save_grid, save_images, save_json, save_text,
                             to_uint8)
from hw2_utils.runs import ALIASES, REQUIRED, RunFolder, add_common_args, git_commit
from hw2_utils.runtime import (DistInfo, autocast, cleanup_distributed, cpu_has_bf16, describe_hardware, dist_info,
                               ema_update, init_distributed, log_main, make_generator, make_train_sampler, progress, quiet,
                               resolve_device, resolve_dtype, run_torchrun_cpu, seed_everything, to_device, unwrap)

__all__ = [
    "CLIError", "Number", "add_option", "check_output_path", "clip_score", "command_line", "error_summary", "fraction_below_one",
    "load_torch_file", "non_negative_float", "non_negative_int", "positive_float", "positive_int", "probability",
    "require_dir", "require_file", "require_finite", "run_cli", "seed_int",
    "CIFAR10_CLASSES", "IMAGE_EXTENSIONS", "atomic_path", "ensure_writable_dir", "list_images", "load_cifar10",
    "markdown_table", "missing", "open_rgb", "output_dir", "output_lock", "pyplot", "read_label_csv", "read_record",
    "record_errors", "save_figure", "save_grid", "save_images", "save_json", "save_text", "to_uint8",
    "ALIASES", "REQUIRED", "RunFolder", "add_common_args", "git_commit",
    "DistInfo", "autocast", "cleanup_distributed", "cpu_has_bf16", "describe_hardware", "dist_info", "ema_update",
    "init_distributed", "log_main", "make_generator", "make_train_sampler", "progress", "quiet", "resolve_device",
    "resolve_dtype", "run_torchrun_cpu", "seed_everything", "to_device", "unwrap",
]
