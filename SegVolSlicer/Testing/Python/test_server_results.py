"""Results the server keeps for corrections: per (session, result key), never shared between two segmentations of
one volume, within the one memory budget. The stand-in network of test_correction answers clicks locally, so a
correction started from the wrong result shows."""

import numpy as np
from fake_segvol import LEFT_IJK, PANCREAS_CENTRE_IJK, CountingBandSegVol, FakeSegVol, pancreas
from test_server import URL, in_process

from SegVolSlicerLib import wire
from SegVolSlicerLib.client import RemoteEngine
from SegVolSlicerLib.engine import EngineHost, TargetJob, VolumeInput
from SegVolSlicerLib.prompts import Target
from SegVolSlicerLib.server import ServerSettings
from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct


def test_two_segmentations_with_a_liver_each_correct_their_own_result(phantom):
    """The mistake: results kept by target name, so that correcting segmentation A's pancreas started from
    segmentation B's (the last one run under that name). Each correction must equal the in-process one from
    its own first result, bit for bit."""
    volume = VolumeInput("ct", phantom.volume, phantom.ijk_to_ras)
    host = EngineHost(model=CountingBandSegVol())
    first_a = host.segment(volume, [TargetJob(pancreas(), "a")])[0]
    host.segment(volume, [TargetJob(pancreas(LEFT_IJK, labels=[1]), "b")])  # another pancreas, grown at the left
    want_a = host.segment(volume, [TargetJob(pancreas(PANCREAS_CENTRE_IJK), "a", correct=True)])[0]
    with in_process(EngineHost(model=CountingBandSegVol())) as (client, server):
        engine = RemoteEngine(URL, http=client.http)
        a, b = ("segmentation A", "pancreas"), ("segmentation B", "pancreas")
        engine.segment(volume, [TargetJob(pancreas(), a)])
        first_b = engine.segment(volume, [TargetJob(pancreas(LEFT_IJK, labels=[1]), b)])[0]
        assert not np.array_equal(first_b.mask, first_a.mask)  # the two results differ
        got_a = engine.segment(volume, [TargetJob(pancreas(PANCREAS_CENTRE_IJK), a, correct=True)])[0]
        assert engine.has_result(volume, a) and engine.has_result(volume, b)
        (session,) = server.sessions.values()
        held = session.replica.engine  # the server's engine keeps one result per segment, not one per name
        kept = [held.has_result(session.volume(), session.result_key(wire.result_key_string(k))) for k in (a, b)]
        assert kept == [True, True]
        engine.forget_results("segmentation B")
        assert engine.closer.join(10) and not engine.has_result(volume, b)
        assert not held.has_result(session.volume(), session.result_key(wire.result_key_string(b)))
        engine.close()
    assert np.array_equal(got_a.mask, want_a.mask)
    assert (got_a.windows, got_a.warnings) == (want_a.windows, want_a.warnings)


def test_a_correction_starts_from_the_clients_current_mask(phantom):
    """The segment as the client has it now (a hand edit) travels with the job: outside the rerun windows its
    voxels stay, so an edit far from the click survives the correction (from the kept result it would not)."""
    volume = VolumeInput("ct", phantom.volume, phantom.ijk_to_ras)
    with in_process(EngineHost(model=CountingBandSegVol())) as (client, _):
        engine = RemoteEngine(URL, http=client.http)
        first = engine.segment(volume, [TargetJob(pancreas(), "edited"), TargetJob(pancreas(), "kept")])[0]
        right = tuple(np.argwhere(first.mask)[np.argmax(np.argwhere(first.mask)[:, 2])])  # far from the left click
        edited = first.mask.copy()
        edited[right] = 0  # a hand edit
        click = pancreas(LEFT_IJK)
        fixed = engine.segment(volume, [TargetJob(click, "edited", correct=True, current_mask=edited)])[0]
        from_kept = engine.segment(volume, [TargetJob(click, "kept", correct=True)])[0]
        engine.close()
    assert fixed.windows == from_kept.windows == 1 and not fixed.changed[2].start <= right[2] < fixed.changed[2].stop
    assert fixed.mask[right] == 0 and from_kept.mask[right] == 1


def test_kept_results_stay_within_the_memory_budget_oldest_first():
    """The mistake: the budget gated only the opening of sessions, while kept results (masks, probabilities,
    zoom-out logits) grew past it. /info's memory never exceeds the budget; the newest results are kept, the
    oldest went."""
    ct = make_synthetic_ct()
    budget_mb = 40 * ct.volume.size / 2**20  # the volume, its engine session, a job's result and a few kept ones
    keys = [("segmentation", n) for n in range(8)]
    with in_process(EngineHost(model=FakeSegVol()), ServerSettings(max_memory_mb=budget_mb)) as (client, server):
        engine = RemoteEngine(URL, http=client.http)
        volume = VolumeInput("ct", ct.volume, ct.ijk_to_ras)
        for key in keys:
            engine.segment(volume, [TargetJob(Target("liver", text="liver"), key)])
            assert client.request("GET", "/info").json()["memory_bytes"] <= server.settings.max_memory_bytes
        (session,) = server.sessions.values()
        held = session.replica.engine
        kept = [held.has_result(session.volume(), session.result_key(wire.result_key_string(k))) for k in keys]
        engine.close()
    assert 0 < sum(kept) < len(keys)
    assert kept == sorted(kept)  # the newest kept, the oldest gone


def test_a_client_forgetting_its_result_leaves_another_sessions_result_of_the_same_key():
    """The mistake: the engine's forget_results matches a key in every volume, so two clients with the same
    segmentation and segment IDs (Slicer's node IDs repeat from scene to scene) would forget each other's."""
    ct = make_synthetic_ct()
    with in_process(EngineHost(model=FakeSegVol(), max_sessions=4)) as (client, server):
        engines = [RemoteEngine(URL, http=client.http) for _ in range(2)]
        volumes = [
            VolumeInput("ct", ct.volume, ct.ijk_to_ras),
            VolumeInput("ct", ct.volume[::-1].copy(), ct.ijk_to_ras),
        ]
        key = ("vtkMRMLSegmentationNode1", "Segment_1")
        for engine, volume in zip(engines, volumes):
            engine.segment(volume, [TargetJob(Target("liver", text="liver"), key)], zoom_in=False)
        engines[0].forget_results("vtkMRMLSegmentationNode1")
        assert engines[0].closer.join(10)
        held = [
            s.replica.engine.has_result(s.volume(), s.result_key(wire.result_key_string(key)))
            for s in sorted(server.sessions.values(), key=lambda s: s.opened)
        ]
        for engine in engines:
            engine.close()
    assert held == [False, True]
