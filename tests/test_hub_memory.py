"""GPU memory of the hub backends, checked on CPU: one SD 1.5 shared by AnimateDiff and zero-shot (same parts, tied
UNet weights, ControlNets shared with per-run frame contexts), offload decided from free memory, the LRU residency
manager (fake memory, fake backends, "meta" standing in for the GPU), per-backend defaults and fp16 variants."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hub_fixtures import save_controlnet, save_sd15

from vdemo.backends.hub import load_hub_backend
from vdemo.backends.hub.base import (
    Residency,
    backend_modules,
    module_tensors,
    move_tensors,
    offload_needed,
    on_zero_gpu,
    place,
)
from vdemo.backends.hub.registry import Source, get_spec, local_variant, resolve
from vdemo.backends.hub.sd15 import load_controlnet, load_sd15_parts, tie_parameters
from vdemo.pipeline import Done, GenerationRequest, VideoPipeline

pytestmark = [pytest.mark.hub,
              pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")]

MIB = 2**20


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core box: threads only spin
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def both(hub_root):
    """Zero-shot and AnimateDiff loaded from the same folder, in that order (the UNet exists before AnimateDiff)."""
    return load_hub_backend("zeroshot", local_dir=hub_root), load_hub_backend("animatediff", local_dir=hub_root)


def generate(backend, **kw) -> np.ndarray:
    base = {"prompt": "a red circle moves right", "num_frames": 4, "height": 32, "width": 32, "num_steps": 2,
            "guidance": 2.0, "seed": 5, "sampler": "DDIM", "attention_mode": "spatial"}
    done = [e for e in VideoPipeline(backend).start(GenerationRequest(**{**base, **kw})) if isinstance(e, Done)]
    return done[0].frames


# ------------------------------------------------------------------------------------------- one SD 1.5
def test_sd15_backends_share_parts_and_unet_weights(both):
    zeroshot, animatediff = both
    z, a = zeroshot.pipes[()], animatediff.pipes[()]
    assert z.vae is a.vae and z.text_encoder is a.text_encoder and z.tokenizer is a.tokenizer
    assert zeroshot.controlnet("pose") is animatediff.controlnet("pose")
    assert zeroshot.controlnet("depth") is animatediff.controlnet("depth")
    unet2d = dict(z.unet.named_parameters())
    for name, param in unet2d.items():  # every 2-D parameter is the motion UNet's own, same storage
        twin = a.unet.get_parameter(name)
        assert twin is param and twin.data_ptr() == param.data_ptr(), name
    adapter = dict(a.motion_adapter.named_parameters())
    assert adapter and all(a.unet.get_parameter(n) is p for n, p in adapter.items()), "motion modules tied too"
    weights = module_tensors([*backend_modules(zeroshot), *backend_modules(animatediff)])
    motion_only = {id(p) for p in a.unet.parameters()} - {id(p) for p in unet2d.values()} - {id(p) for p in
                                                                                               adapter.values()}
    assert not motion_only, "the motion UNet holds no parameter of its own"
    assert len(weights) < len(module_tensors(backend_modules(zeroshot))) + len(module_tensors(
        backend_modules(animatediff))), "the union counts the shared parts once"


def test_shared_parts_cache_is_keyed_by_location_revision_dtype(hub_root):
    base = resolve(get_spec("zeroshot"), "base", hub_root)
    first, again = load_sd15_parts(base, torch.float32), load_sd15_parts(base, torch.float32)
    assert all(first[k] is again[k] for k in ("unet", "vae", "text_encoder", "tokenizer"))
    assert first["scheduler_config"] is not again["scheduler_config"], "a fresh dict: callers pop from it"
    half = load_sd15_parts(base, torch.bfloat16)
    assert half["unet"] is not first["unet"] and half["unet"].dtype == torch.bfloat16
    assert half["tokenizer"] is first["tokenizer"], "a tokenizer has no dtype"


def test_both_generate_and_shared_controlnet_follows_the_running_backend(both):
    """The ControlNet both hold gets processors bound to the running backend's frame context: AnimateDiff's pose run
    is the same before and after zero-shot ran its own (other frame count, other mode) through that ControlNet."""
    zeroshot, animatediff = both
    pose = np.random.default_rng(1).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    before = generate(animatediff, pose=pose, attention_mode="temporal")
    frames = generate(zeroshot, pose=pose, num_frames=6, attention_mode="sparse_causal")
    after = generate(animatediff, pose=pose, attention_mode="temporal")
    assert frames.shape == (6, 32, 32, 3) and np.isfinite(frames).all()
    assert np.array_equal(before, after)
    assert generate(zeroshot).shape == generate(animatediff).shape == (4, 32, 32, 3), "text runs, 2 steps each"


def test_tying_leaves_animatediff_output_unchanged(both, hub_root, monkeypatch):
    _, tied = both
    request = {"attention_mode": "temporal", "seed": 11}
    with_ties = generate(tied, **request)
    monkeypatch.setattr("vdemo.backends.hub.animatediff.tie_parameters", lambda target, source: [])
    untied = load_hub_backend("animatediff", local_dir=hub_root)  # from_unet2d's own copies
    name, param = next(iter(untied.base_unet.named_parameters()))
    assert untied.base_unet is tied.base_unet, "same cached 2-D UNet"
    assert untied.pipes[()].unet.get_parameter(name).data_ptr() != param.data_ptr(), "really untied"
    assert np.array_equal(with_ties, generate(untied, **request))


def test_tie_parameters_reports_what_found_no_twin(monkeypatch, both):
    source = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))
    target = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 6))
    assert tie_parameters(target, source) == ["1.weight", "1.bias"]
    assert target[0].weight is source[0].weight and target[0].bias is source[0].bias
    target.to(torch.float64)  # .to() keeps the tie: the Parameter object is shared, its data replaced in place
    assert target[0].weight is source[0].weight and source[0].weight.dtype == torch.float64
    from vdemo.backends.hub import animatediff

    monkeypatch.setattr(animatediff, "tie_parameters", lambda target, source: ["conv_in.weight"])
    _, backend = both
    with pytest.raises(RuntimeError, match="1 SD 1.5 UNet parameters have no twin"):
        animatediff.motion_unet(backend.base_unet, backend.pipes[()].motion_adapter)


# ------------------------------------------------------------------------------------- residency and placement
class FakeBackend:
    """What the residency reads of a backend: name, device, offload, min_vram_gib, lock and pipelines' models."""

    def __init__(self, name: str, mib: int, *shared: torch.nn.Parameter, working_mib: int = 1):
        self.name, self.device, self.offload, self.lock = name, "meta", "none", threading.Lock()
        own = torch.nn.Linear(256, mib * 1024, bias=False)  # mib MiB of float32
        extra = torch.nn.ParameterList(shared)
        self.pipes = {(): SimpleNamespace(components={"unet": own, "shared": extra, "tokenizer": object()})}
        self.weights = own.weight
        self.min_vram_gib = (mib + sum(p.nbytes for p in shared) / MIB + working_mib) * MIB / 2**30


def fake_move(tensors, device) -> int:
    """move_tensors, but out of "meta" (which has no data to copy) into fresh empty tensors."""
    moved = 0
    for t in tensors:
        if t.device.type == "meta":
            torch.utils.swap_tensors(t, torch.nn.Parameter(torch.empty_like(t, device=device)))
            moved += t.nbytes
        else:
            moved += move_tensors([t], torch.device(device))
    return moved


def fake_gpu(total_mib: float, *backends):
    """free_bytes for a 'GPU' of total_mib: total minus every tensor the backends have on meta (shared once)."""
    def free_bytes(device) -> int:
        tensors = module_tensors([m for b in backends for m in backend_modules(b)]).values()
        return int(total_mib * MIB) - sum(t.nbytes for t in tensors if t.device.type == "meta")
    return free_bytes


def residency(free_bytes, *backends) -> Residency:
    r = Residency(free_bytes=free_bytes, enabled=True, min_working=0, move=fake_move)
    for b in backends:
        r.track(b)
    return r


def on_gpu(backend) -> bool:
    return backend.weights.device.type == "meta"


def test_residency_evicts_least_recently_used_only_when_memory_is_short():
    a, b, c = FakeBackend("a", 1), FakeBackend("b", 1), FakeBackend("c", 1)
    d = FakeBackend("d", 2)
    r = residency(fake_gpu(4, a, b, c, d), a, b, c, d)
    assert [r.acquire(x) for x in (a, b, c)] == [[], [], []], "1 MiB each + 1 MiB working fit in 4 MiB"
    assert on_gpu(a) and on_gpu(b) and on_gpu(c)
    assert r.acquire(a) == [], "resident already: only its working MiB is needed, and 1 MiB is free"
    assert r.acquire(d) == ["b", "c"], "d needs 3 MiB: b then c leave (least recently used), a stays"
    assert on_gpu(a) and on_gpu(d) and not on_gpu(b) and not on_gpu(c)
    assert r.acquire(b) == ["a"], "c is off the GPU already; a is now the least recently used holder"
    assert on_gpu(b) and on_gpu(d) and not on_gpu(a)


def test_residency_spares_shared_and_running_weights():
    shared = torch.nn.Parameter(torch.zeros(256, 1024))  # 1 MiB both backends hold (the SD 1.5 parts)
    a, b = FakeBackend("a", 1, shared), FakeBackend("b", 1, shared)
    c, e = FakeBackend("c", 1), FakeBackend("e", 1)
    r = residency(fake_gpu(4, a, b, c, e), a, b, c)
    assert r.acquire(a) == [] and r.acquire(c) == []
    assert r.acquire(b) == ["a"], "b needs 2 MiB, 1 free: a (LRU) leaves"
    assert shared.device.type == "meta" and on_gpu(b) and not on_gpu(a), "but b's share of a stays"
    assert r.acquire(a) == ["c"]
    with b.lock:  # b (least recently used) is running: it must not be evicted; a goes, less the shared weights
        assert r.acquire(e) == ["a"]
        assert on_gpu(b) and on_gpu(e) and not on_gpu(a) and shared.device.type == "meta"


def test_residency_is_a_no_op_off_a_dedicated_gpu(monkeypatch):
    a, b = FakeBackend("a", 1), FakeBackend("b", 1)
    off = residency(fake_gpu(1, a, b), a, b)
    off.enabled = False  # ZeroGPU
    assert off.acquire(a) == [] and not on_gpu(a), "spaces moves the weights there"
    on_cpu = residency(fake_gpu(1, a, b), a, b)
    a.device = "cpu"
    assert on_cpu.acquire(a) == [] and not on_gpu(a)
    monkeypatch.setattr("spaces.config.Config.zero_gpu", True)
    assert on_zero_gpu() and not Residency().enabled
    assert offload_needed(a.pipes[()], "meta", 99.0, off) is False, "ZeroGPU: always on the device"


def test_offload_decided_from_free_memory_after_eviction():
    a = FakeBackend("a", 2)
    pipe = FakeBackend("new", 1).pipes[()]  # 1 MiB of weights on the host
    r = residency(fake_gpu(4, a, SimpleNamespace(pipes={(): pipe})), a)
    r.acquire(a)  # a: 2 MiB on the 'GPU', 2 MiB free
    need_gib = 2 * MIB / 2**30  # weights (1) + working (1) = 2 MiB
    assert offload_needed(pipe, "meta", need_gib, r) is False and on_gpu(a), "fits: nothing evicted"
    assert offload_needed(pipe, "meta", 3 * MIB / 2**30, r) is False and not on_gpu(a), "fits once a leaves"
    r.acquire(a)
    assert offload_needed(pipe, "meta", 6 * MIB / 2**30, r) is True and on_gpu(a), "can never fit: a stays"


def test_place_on_cpu_and_move_tensors_keeps_ties():
    assert place(torch.nn.Linear(2, 2), "cpu", 99.0) == "none", "CPU: no memory question"
    shared = torch.nn.Linear(4, 4)
    user = torch.nn.Sequential(torch.nn.Linear(4, 4))
    user[0].weight = shared.weight
    moved = move_tensors(module_tensors([user, shared]).values(), torch.device("meta"))
    assert moved == sum(t.nbytes for t in module_tensors([user, shared]).values())
    assert user[0].weight is shared.weight and shared.weight.device.type == "meta"


# ------------------------------------------------------------------------------------------- defaults
def test_per_backend_defaults(hub_root):
    from vdemo.backends.hub.animatediff import AnimateDiffBackend
    from vdemo.backends.hub.svd import SVDBackend
    from vdemo.backends.hub.zeroshot import ZeroShotBackend

    expect = {AnimateDiffBackend: (7.5, 25, 16), ZeroShotBackend: (7.5, 25, 8), SVDBackend: (3.0, 25, 14)}
    for cls, values in expect.items():
        assert (cls.default_guidance, cls.default_steps, cls.default_num_frames) == values, cls.__name__
        assert cls.limits.min_frames <= cls.default_num_frames <= cls.limits.max_frames
    assert get_spec("svd-xt").default_num_frames == 25
    assert load_hub_backend("svd-xt", local_dir=hub_root).default_num_frames == 25
    assert load_hub_backend("svd", local_dir=hub_root).default_num_frames == 14


# ------------------------------------------------------------------------------------------- fp16 variants
def test_depth_controlnet_loads_its_fp16_variant():
    source = resolve(get_spec("animatediff"), "controlnet_depth", None)
    assert source.pretrained_kwargs(torch.float16)["variant"] == "fp16"
    assert "variant" not in source.pretrained_kwargs(torch.float32)


def test_local_folder_gets_fp16_variant_only_when_it_has_fp16_files(tmp_path):
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(0)
    save_controlnet(tmp_path / "plain")
    net = load_controlnet(Source("controlnet_pose", str(tmp_path / "plain"), None, local=True), torch.float32)
    net.to(torch.float16).save_pretrained(tmp_path / "half", variant="fp16", safe_serialization=True)
    half = Source("controlnet_pose", str(tmp_path / "half"), None, local=True)
    plain = Source("controlnet_pose", str(tmp_path / "plain"), None, local=True)
    assert half.pretrained_kwargs(torch.float16)["variant"] == "fp16"
    assert "variant" not in half.pretrained_kwargs(torch.float32) and "variant" not in plain.pretrained_kwargs(
        torch.float16)
    assert load_controlnet(half, torch.float16).dtype == torch.float16
    assert load_controlnet(plain, torch.float16).dtype == torch.float16, "fp32 files, cast on load"

    save_sd15(tmp_path / "sd")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd", local_files_only=True)
    pipe.to(torch.float16).save_pretrained(tmp_path / "sd16", variant="fp16", safe_serialization=True)
    assert local_variant(tmp_path / "sd16" / "unet") == "fp16"
    assert local_variant(tmp_path / "sd16" / "tokenizer") is None, "no weights there: loaded without a variant"
    base = Source("base", str(tmp_path / "sd16"), None, local=True)
    parts = load_sd15_parts(base, torch.float16)
    assert parts["unet"].dtype == parts["vae"].dtype == parts["text_encoder"].dtype == torch.float16
