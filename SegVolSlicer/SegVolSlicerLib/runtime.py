"""Where and how inference runs: devices, precision, window batching, and the CPU fallback when a GPU runs
out of memory. Every face (Slicer, the CLI, the server, the batch runner) takes these choices from here.

torch is imported inside the functions: Slicer imports this module before its dependency step has
installed torch.
"""

from __future__ import annotations

from .errors import InputError

# Device choices as the user gives them; "cuda:N" picks one of several GPUs.
DEVICES = ("auto", "cpu", "cuda", "mps")
# Image-encoder precision; "auto" is `default_precision(device)`. The decoder always runs in fp32.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_HELP = "where the model runs: auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N (the N-th GPU) or mps"


def check_device_name(name: str) -> str:
    """`name` if it is a device choice (auto, cpu, cuda, cuda:N, mps), else one clear InputError."""
    kind, _, index = str(name).partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise InputError(f"unknown device {name!r}: choose one of auto, cpu, cuda, cuda:N, mps")
    return str(name)


def check_precision_name(name: str) -> str:
    if name not in PRECISIONS:
        raise InputError(f"unknown precision {name!r}: choose one of {', '.join(PRECISIONS)}")
    return name


def resolve_device(device="auto"):
    """The torch.device for a device choice: "auto" picks CUDA, then Apple MPS, then CPU; an unavailable
    explicit choice is a user error."""
    import torch

    name = check_device_name(str(device))
    kind = name.split(":")[0]
    mps_available = torch.backends.mps.is_available()
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA was requested but no CUDA GPU is usable here: use device 'cpu' or 'auto'")
        if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
            raise InputError(
                f"there is no GPU {name}: this machine has {torch.cuda.device_count()} "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    if kind == "mps" and not mps_available:
        raise InputError("Apple MPS was requested but is not available here: use device 'cpu' or 'auto'")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """x86 CPUs with AVX512-BF16 or AMX run bf16 matmuls natively (oneDNN); elsewhere bf16 is emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def default_precision(device) -> str:
    """What "auto" means: bf16 autocast where the hardware runs it natively (CUDA with bf16, else fp16;
    CPUs with AVX512-BF16/AMX), fp32 elsewhere (MPS, older CPUs). Reduced precision stays within Dice 0.99
    of fp32; fp32 is the exact-parity path."""
    import torch

    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def resolve_precision(precision: str, device) -> str:
    """The concrete precision ("fp32", "bf16", "fp16") for a choice on a torch.device."""
    precision = check_precision_name(precision)
    if precision == "auto":
        return default_precision(device)
    if precision == "fp16" and device.type == "cpu":
        raise InputError("fp16 needs a GPU: use bf16 or fp32 on the CPU")
    return precision


def window_batch_size(device) -> int:
    """Zoom-in windows encoded per encoder call: 4 on CUDA, where batching fills the GPU; 1 elsewhere, where
    it gains nothing and raises peak memory."""
    return 4 if device.type == "cuda" else 1


def keeps_crop_on_device(device) -> bool:
    """On a GPU the cropped volume is uploaded once and the windows are cut out there, not copied one by one."""
    return device.type == "cuda"


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; MPS and older torch raise RuntimeError("... out of memory ...")."""
    return type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def fallback_message(device) -> str:
    return (
        f"Not enough GPU memory on '{device}': SegVol continues on the CPU (slower) until another device or "
        "other weights are chosen."
    )


def release_device_memory() -> None:
    """Hand the memory torch keeps cached on GPUs back to the driver (after an out-of-memory error)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()
