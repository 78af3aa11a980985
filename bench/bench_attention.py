"""The joint attention of one CogVideoX-2B block at the stream's and training's window (17 latent frames at 480x720:
22,950 video tokens and 226 text tokens, 30 heads of 64), through each backend of torch's
``scaled_dot_product_attention``: what the fast paths could gain from the attention alone (about 60% of a forward's
FLOPs at this shape).

    python bench/bench_attention.py --json attention.json

Rows: torch's default choice (what stock diffusers runs), then each backend forced with ``torch.nn.attention.
sdpa_kernel``; forward, and forward with backward (training). Each row's output is compared with the default's on
the same inputs (relative RMS), and each backend with float32 math attention on a short sequence.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
REFERENCE_TOKENS = 2048  # short enough for float32 math attention's score matrix


def median_ms(function, warmups: int, repeats: int) -> float:
    """Median of ``repeats`` timings of ``function`` with CUDA events, after ``warmups`` untimed calls."""
    for _ in range(warmups):
        function()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def chosen(backend):
    """``backend`` forced, or torch's own choice for ``None``."""
    return sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()


def relative_rms(output: torch.Tensor, reference: torch.Tensor) -> float:
    return ((output.float() - reference.float()).norm() / reference.float().norm()).item()


def attention_inputs(tokens: int, heads: int, head_dim: int, requires_grad: bool) -> list[torch.Tensor]:
    return [
        torch.randn(1, heads, tokens, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=requires_grad)
        for _ in range(3)
    ]


def time_row(backend, cli, query, key, value, gradient) -> dict:
    """Forward and forward-with-backward times of one backend (``None``: torch's own choice)."""

    def forward():
        with chosen(backend):
            return F.scaled_dot_product_attention(query, key, value)

    def forward_backward():
        forward().backward(gradient)

    with torch.no_grad():
        forward_ms = median_ms(forward, cli.warmups, cli.repeats)
    return {
        "forward_ms": forward_ms,
        "forward_backward_ms": median_ms(forward_backward, cli.warmups, cli.repeats),
        "output": forward().detach(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=22950 + 226, help="the window's video and text tokens")
    parser.add_argument("--heads", type=int, default=30)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--warmups", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None, help="write the results here")
    cli = parser.parse_args()
    torch.manual_seed(0)
    flops = 4 * cli.tokens**2 * cli.head_dim * cli.heads  # two matmuls of 2 * tokens^2 * head_dim a head
    query, key, value = attention_inputs(cli.tokens, cli.heads, cli.head_dim, requires_grad=True)
    gradient = torch.randn_like(query)
    short = attention_inputs(REFERENCE_TOKENS, cli.heads, cli.head_dim, requires_grad=False)
    math_reference = F.scaled_dot_product_attention(*(tensor.float() for tensor in short))
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": vars(cli), "rows": {}}
    default = None
    for name, backend in {"default": None, **BACKENDS}.items():
        try:
            row = time_row(backend, cli, query, key, value, gradient)
            with chosen(backend), torch.no_grad():
                short_output = F.scaled_dot_product_attention(*short)
        except RuntimeError as error:
            results["rows"][name] = {"error": str(error).splitlines()[0]}
            print(f"{name:10s} not available: {results['rows'][name]['error']}")
            continue
        default = row["output"] if default is None else default
        record = {
            "forward_ms": round(row["forward_ms"], 3),
            "forward_backward_ms": round(row["forward_backward_ms"], 3),
            "forward_tflops": round(flops / row["forward_ms"] / 1e9, 1),
            "error_vs_default": relative_rms(row["output"], default),
            f"error_vs_float32_math_at_{REFERENCE_TOKENS}_tokens": relative_rms(short_output, math_reference),
        }
        results["rows"][name] = record
        print(f"{name:10s} {json.dumps(record)}")
        if cli.json:
            with open(cli.json, "w") as handle:
                json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
