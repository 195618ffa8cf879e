"""The engine host: one model per choice, sessions per volume within a budget, the CPU fallback, one request
at a time; and the runtime choices every face takes from one place."""

import threading
import time

import numpy as np
import pytest
import torch
from fake_segvol import FakeSegVol, FullGpuSegVol
from recording_reporter import RecordingReporter

import SegVolSlicerLib.model
import SegVolSlicerLib.weights
from SegVolSlicerLib import runtime
from SegVolSlicerLib.engine import EngineHost, ModelChoice, SessionOptions, VolumeInput
from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.inference import SegVolSession
from SegVolSlicerLib.prompts import Target
from SegVolSlicerLib.reporting import Reporter

LIVER = Target("liver", text="liver")


def volume_input(ct, key="CT", signature=None, voxels=None):
    return VolumeInput(key, ct.volume if voxels is None else voxels, ct.ijk_to_ras, signature)


@pytest.fixture
def loads(monkeypatch):
    """Stand-in weights loading: records (weights, device, precision) and returns a FakeSegVol there."""
    calls = []

    def load_segvol(path, device="auto", precision="fp32"):
        calls.append((str(path), device, precision))
        model = FakeSegVol()
        model.device = torch.device("cpu")
        return model

    monkeypatch.setattr(SegVolSlicerLib.weights, "resolve_weights", lambda source, cache_dir, progress: source)
    monkeypatch.setattr(SegVolSlicerLib.model, "load_segvol", load_segvol)
    return calls


def test_the_model_is_loaded_once_per_choice(loads, ct):
    host = EngineHost(ModelChoice("a.pth", "cpu", "fp32"))
    host.segment(volume_input(ct), [LIVER], zoom_in=False)
    host.segment(volume_input(ct), [LIVER], zoom_in=False)
    assert loads == [("a.pth", "cpu", "fp32")]
    host.select(ModelChoice("a.pth", "cpu", "fp32"))  # the same choice: kept, sessions too
    assert host.loaded_model is not None and host.session_keys() == ["CT"]
    host.select(ModelChoice("b.pth", "cpu", "fp32"))  # another: dropped, with its sessions' embeddings
    assert host.loaded_model is None and host.session_keys() == []
    host.segment(volume_input(ct), [LIVER], zoom_in=False)
    assert loads[-1] == ("b.pth", "cpu", "fp32")


def test_a_given_model_is_kept_whatever_is_selected(loads, ct):
    model = FakeSegVol()
    host = EngineHost(model=model)
    host.select(ModelChoice("other.pth", "cpu"))
    host.segment(volume_input(ct), [LIVER], zoom_in=False)
    assert loads == [] and host.loaded_model is model


def test_bad_choices_are_clear_errors():
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        ModelChoice(device="tpu")
    with pytest.raises(InputError, match="unknown device 'cpu:1'"):
        ModelChoice(device="cpu:1")
    with pytest.raises(InputError, match="unknown precision"):
        ModelChoice(precision="int8")
    assert ModelChoice(device="cuda:1").device == "cuda:1"


def test_results_equal_a_session_of_its_own(ct):
    model = FakeSegVol()
    targets = [LIVER, Target("spleen", text="spleen")]
    hosted = EngineHost(model=model).segment(volume_input(ct), targets)
    direct = SegVolSession(FakeSegVol(), ct.volume, ct.ijk_to_ras).segment_many(targets)
    for a, b in zip(hosted, direct):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.zoom_out_mask, b.zoom_out_mask)


def test_sessions_are_reused_per_key_and_signature(ct):
    model = FakeSegVol()
    host = EngineHost(model=model)
    first = host.session(volume_input(ct, signature=1))
    assert host.session(volume_input(ct, signature=1)) is first
    host.segment(volume_input(ct, signature=1), [LIVER], zoom_in=False)
    assert model.image_calls == 1  # the zoom-out embedding, once
    changed = host.session(volume_input(ct, signature=2))  # new voxels under the same key
    assert changed is not first and host.session_keys() == ["CT"]
    host.forget_if_changed("CT", 3)
    assert host.kept_session("CT") is None


def test_least_recently_used_sessions_go_first_by_count(ct):
    host = EngineHost(model=FakeSegVol(), max_sessions=2)
    for key in ("a", "b"):
        host.session(volume_input(ct, key))
    host.session(volume_input(ct, "a"))  # "a" is now the most recent
    host.session(volume_input(ct, "c"))
    assert host.session_keys() == ["a", "c"]
    host.keep_only(["c", "gone"])
    assert host.session_keys() == ["c"]
    host.forget("c")
    assert host.session_keys() == []


def test_sessions_are_evicted_by_memory(ct):
    one = SegVolSession(FakeSegVol(), ct.volume, ct.ijk_to_ras).memory_bytes
    budget_mb = (2 * one + 50_000) / 2**20  # room for two prepared volumes, not three, and few embeddings
    host = EngineHost(model=FakeSegVol(), max_sessions=10, memory_budget_mb=budget_mb)
    for key in ("a", "b", "c"):
        host.session(volume_input(ct, key))
    assert host.session_keys() == ["b", "c"] and host.memory_bytes <= budget_mb * 2**20
    # Embeddings cached by a run count too: after it, only the session just used may stay.
    host.segment(volume_input(ct, "c"), [LIVER])
    assert host.session_keys() == ["c"]


def test_the_session_in_use_is_kept_even_over_budget(ct):
    host = EngineHost(model=FakeSegVol(), memory_budget_mb=0.001)
    host.segment(volume_input(ct, "big"), [LIVER], zoom_in=False)
    assert host.session_keys() == ["big"]


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 9.00 GB)"),
    ],
)
def test_a_full_gpu_moves_the_model_to_the_cpu_once(ct, error):
    model = FullGpuSegVol(error)
    host = EngineHost(ModelChoice(precision="fp16"), model=model)
    reporter = RecordingReporter()
    (result,) = host.segment(volume_input(ct), [LIVER], zoom_in=False, reporter=reporter)
    assert result.mask.any() and model.moves == ["cpu"]
    assert model.precision == ("auto", "cpu")  # a GPU's fp16 does not run on the CPU: chosen again there
    assert len(reporter.notices) == 1 and "continues on the CPU" in reporter.notices[0]
    host.segment(volume_input(ct), [LIVER], zoom_in=False, reporter=reporter)
    assert model.moves == ["cpu"] and len(reporter.notices) == 1  # stays there, no second notice


def test_no_fallback_for_other_errors_on_the_cpu_or_when_switched_off(ct):
    cpu_oom = RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate; out of memory")

    class Failing(FakeSegVol):
        def __init__(self, error, device="cpu"):
            super().__init__()
            self.error, self.device = error, torch.device(device)

        def encode_image(self, image):
            raise self.error

    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        EngineHost(model=Failing(cpu_oom)).segment(volume_input(ct), [LIVER])
    with pytest.raises(ValueError):
        EngineHost(model=Failing(ValueError("not memory"), "mps")).segment(volume_input(ct), [LIVER])
    gpu_oom = torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(torch.OutOfMemoryError):
        EngineHost(model=FullGpuSegVol(gpu_oom), cpu_fallback=False).segment(volume_input(ct), [LIVER])


def test_out_of_memory_while_loading_loads_on_the_cpu(loads, ct, monkeypatch):
    load = SegVolSlicerLib.model.load_segvol

    def load_segvol(path, device="auto", precision="fp32"):
        if device != "cpu":
            loads.append((str(path), device, precision))
            raise torch.OutOfMemoryError("CUDA out of memory")
        return load(path, device, precision)

    monkeypatch.setattr(SegVolSlicerLib.model, "load_segvol", load_segvol)
    reporter = RecordingReporter()
    host = EngineHost(ModelChoice("w.pth", "cuda:1", "fp16"))
    host.segment(volume_input(ct), [LIVER], zoom_in=False, reporter=reporter)
    assert loads == [("w.pth", "cuda:1", "fp16"), ("w.pth", "cpu", "auto")]
    assert "'cuda:1'" in reporter.notices[0] and reporter.stages[:2] == ["load", "load"]


@pytest.mark.parametrize(
    "error",
    [RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"), torch.OutOfMemoryError("CUDA out of memory")],
)
def test_out_of_memory_is_recognised(error):
    assert runtime.is_out_of_memory(error)
    assert not runtime.is_out_of_memory(ValueError("out of memory"))


def test_requests_run_one_at_a_time(ct):
    """The GPU is shared: a second request waits for the first (server threads, Slicer's worker)."""
    running, overlaps = [], []

    class Slow(FakeSegVol):
        def decode(self, *args, **kwargs):
            running.append(1)
            overlaps.append(len(running))
            time.sleep(0.01)
            running.pop()
            return super().decode(*args, **kwargs)

    host = EngineHost(model=Slow(), max_sessions=4)
    threads = [threading.Thread(target=host.segment, args=(volume_input(ct, key), [LIVER], False)) for key in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(overlaps) == 4 and max(overlaps) == 1


def test_session_options_reach_the_sessions(ct):
    host = EngineHost(
        model=FakeSegVol(), session_options=SessionOptions(cache_budget_mb=1, point_sampling="official", seed=7)
    )
    session = host.session(volume_input(ct))
    assert (session.cache.budget_bytes, session.point_sampling, session.seed) == (2**20, "official", 7)


def test_one_device_list_for_every_face():
    import SegVolSlicerLib.cli as cli

    parser = cli.build_parser()
    assert parser.parse_args(["demo", "--device", "cuda:1"]).device == "cuda:1"
    for device in runtime.DEVICES:
        assert parser.parse_args(["demo", "--device", device]).device == device
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--device", "gpu"])


def test_a_volume_forgotten_while_it_is_prepared_is_not_kept(ct):
    """Slicer forgets a removed volume from the GUI thread while the worker may be preparing its session: the
    forget must hold, or the removed volume's float copy and caches stay in memory."""
    host = EngineHost(model=FakeSegVol())

    class ForgetDuringPreprocessing(Reporter):
        def progress(self, stage, done, total):
            if stage == "preprocess" and done == 0:
                host.forget("CT")

    (result,) = host.segment(volume_input(ct), [LIVER], zoom_in=False, reporter=ForgetDuringPreprocessing())
    assert result.mask.any() and host.session_keys() == []  # the run itself completes
    host.segment(volume_input(ct), [LIVER], zoom_in=False)
    assert host.session_keys() == ["CT"]  # a later run keeps its session again
