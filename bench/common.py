"""What the benchmarks share: the machine's name, CUDA synchronisation, report files and the CLI wrapper."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import UserError, say_error

if TYPE_CHECKING:  # torch is imported where a benchmark measures it: bench.cuda_shapes writes reports without it
    import torch


def device_name(device: torch.device) -> str:
    """A human-readable name of the machine the benchmark runs on."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so the clock measures it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_report(out: str | Path, report: dict[str, Any], markdown: str) -> None:
    """`<out>.json` and `<out>.md`, folders created; prints where they went."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = Path(f"{out}.json"), Path(f"{out}.md")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown)
    print(f"\nwrote {json_path} and {md_path}")


def cli(run: Callable[[Any], Any], parse_args: Callable[[list[str] | None], Any], argv: list[str] | None) -> int:
    """Run a benchmark; a user mistake is one `error:` line and exit code 2."""
    try:
        run(parse_args(argv))
    except UserError as e:
        say_error(str(e))
        return 2
    return 0
