"""The machine's floor, measured in the benchmark's own run: every model pass as a multiple of the time its
FLOPs take at this machine's large-matmul throughput.

    floor = Floor.measure(device)                       # bf16 and fp32 torch.matmul throughput, here, now
    flops = pass_flops()                                 # FLOPs of one encoder / decoder / text pass
    print(floor.describe("encoder pass", seconds, flops.encoder, "bf16"))
    # encoder pass: 1.71 s = 1.32x the floor (1.30 s: 505.7 GFLOP at 389 GFLOP/s bf16)

The throughput is the best of a few timed loops of one large square matmul: the most this machine does with
the dtype, on the threads torch uses. Measured in the same run as the passes, the ratio holds on a shared
machine as long as the load does not change between the two (repeat the run, read the minima). FLOPs are
counted by torch's FlopCounterMode on a meta-device copy of the network (no weights, nothing computed):
a (multiply, add) pair counts 2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from SegVolSlicerLib.model.image_encoder import EMBED_DIM, WINDOW_SIZE
from SegVolSlicerLib.model.segvol import SegVol

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_throughput(dtype: torch.dtype, device: torch.device, size: int, loops: int, repeats: int) -> float:
    """FLOP/s of the fastest of `repeats` timed loops of `loops` (size x size) @ (size x size) matmuls."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.matmul(a, b)  # warm-up: oneDNN / cuBLAS pick their kernels
    _synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            torch.matmul(a, b)
        _synchronize(device)
        best = min(best, (time.perf_counter() - start) / loops)
    return 2 * size**3 / best


@dataclass(frozen=True)
class Floor:
    device: str
    flops_per_s: dict  # precision name -> FLOP/s of a large matmul

    @classmethod
    def measure(cls, device: torch.device, short: bool = False) -> Floor:
        """fp32 and bf16 (and fp16 on a GPU) throughput; `short`: fewer loops (a rougher figure)."""
        gpu = device.type == "cuda"
        size = 8192 if gpu else 2048
        loops, repeats = (20 if gpu else 4, 3) if short else (50 if gpu else 8, 5)
        names = ("fp32", "bf16", "fp16") if gpu else ("fp32", "bf16")
        return cls(str(device), {n: matmul_throughput(DTYPES[n], device, size, loops, repeats) for n in names})

    def seconds(self, flops: float, precision: str) -> float:
        """The time `flops` take at the floor."""
        return flops / self.flops_per_s[precision]

    def multiple(self, seconds: float, flops: float, precision: str) -> float:
        """`seconds` as a multiple of the floor (1.0 = the pass runs as fast as a large matmul)."""
        return seconds / self.seconds(flops, precision)

    def describe(self, what: str, seconds: float, flops: float, precision: str) -> str:
        floor = self.seconds(flops, precision)
        rate = self.flops_per_s[precision] / 1e9
        return (
            f"{what}: {seconds:.3f} s = {seconds / floor:.2f}x the floor "
            f"({floor:.3f} s: {flops / 1e9:.1f} GFLOP at {rate:.0f} GFLOP/s {precision})"
        )

    def lines(self) -> list[str]:
        rates = ", ".join(f"{name} {rate / 1e9:.0f} GFLOP/s" for name, rate in self.flops_per_s.items())
        return [f"floor on {self.device}: {rates}"]


@dataclass(frozen=True)
class PassFlops:
    encoder: float  # one 32x256x256 window through the image encoder
    decoder: float  # one decoder pass (prompt encoder + mask decoder, text similarity included)


def pass_flops() -> PassFlops:
    """FLOPs of one encoder and one decoder pass, counted on a meta-device SegVol (instant, no weights)."""
    with torch.device("meta"):
        model = SegVol(tokenizer=object()).eval()  # the tokenizer is never called here
        image = torch.zeros(1, 1, *WINDOW_SIZE)
        text = torch.zeros(1, EMBED_DIM)
        box = torch.zeros(1, 1, 6)
    # Not under no_grad: FlopCounterMode's module tracker then trips over the decoder's expanded tensors.
    with FlopCounterMode(display=False) as encoder:
        embedding = model.image_encoder(image)
    with FlopCounterMode(display=False) as decoder:
        sparse, dense = model.prompt_encoder(None, box, text)
        model.mask_decoder(embedding, model.prompt_encoder.pe_layer.dense(), sparse, dense, text)
    return PassFlops(float(encoder.get_total_flops()), float(decoder.get_total_flops()))


def time_passes(model, repeats: int = 3) -> dict[str, float]:
    """Fastest of `repeats` encoder passes (one window, the model's precision) and decoder passes (text + box,
    upsampled as the pipeline uses them) on the loaded model."""
    device = model.device
    image = torch.rand(1, 1, *WINDOW_SIZE, generator=torch.Generator().manual_seed(0)).to(device)
    text = model.encode_text(["liver"])
    box = torch.tensor([[4.0, 40.0, 40.0, 20.0, 200.0, 180.0]])
    best = {"encoder": float("inf"), "decoder": float("inf")}
    embedding = model.encode_image(image)  # warm-up
    model.decode(embedding, text, box)
    passes = {"encoder": lambda: model.encode_image(image), "decoder": lambda: model.decode(embedding, text, box)}
    for _ in range(repeats):
        for name, run in passes.items():
            _synchronize(device)
            start = time.perf_counter()
            run()
            _synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def pass_lines(model, floor: Floor, flops: PassFlops, repeats: int = 3) -> tuple[list[str], dict[str, float]]:
    """One line per pass (its time and its multiple of the floor: encoder at the model's precision, decoder in
    fp32, as the pipeline runs them), and the passes' seconds."""
    seconds = time_passes(model, repeats)
    lines = [
        floor.describe(f"encoder pass ({model.precision})", seconds["encoder"], flops.encoder, model.precision),
        floor.describe("decoder pass (fp32)", seconds["decoder"], flops.decoder, "fp32"),
    ]
    return lines, seconds


if __name__ == "__main__":
    import argparse

    from SegVolSlicerLib.runtime import resolve_device

    parser = argparse.ArgumentParser(description="the matmul floor and each pass's FLOPs on this machine")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--short", action="store_true")
    args = parser.parse_args()
    measured = Floor.measure(resolve_device(args.device), short=args.short)
    counted = pass_flops()
    print("\n".join(measured.lines()))
    print(f"encoder pass {counted.encoder / 1e9:.1f} GFLOP, decoder pass {counted.decoder / 1e9:.1f} GFLOP")
