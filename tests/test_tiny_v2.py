"""The v2 built-in model (`tiny-v2`, latent video diffusion): its long run writes what the backend loads, resumes,
and the backend runs the shared pipeline on latents: every mode and sampler, previews, causality, guidance, limits."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vdemo import world
from vdemo.backends import backend_info, backend_names, load_backend, weights_present
from vdemo.backends.tiny_v2 import TinyV2Backend
from vdemo.bakeoff import eval_cases
from vdemo.config import ATTENTION_MODES
from vdemo.errors import ModelNotFound
from vdemo.pipeline import Done, GenerationRequest, Progress, RequestError, VideoPipeline
from vdemo.strokes import Stroke
from vdemo.train_v2 import main as train_v2_main

FAST = ["--tiny", "--cases", "3", "--steps", "2", "--size", "64", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: threads only contend on a shared box


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A minute-scale v2 model trained for a few CPU-seconds, with one eval, in the layout the app loads."""
    root = tmp_path_factory.mktemp("v2")
    out, state = root / "out", root / "state.pt"
    train_v2_main([*FAST, "--minutes", "0.15", "--eval-every", "0.05", "--ckpt-every", "0.05", "--out", str(out),
                   "--state", str(state)])
    return out, state


def test_the_long_run_writes_the_model_folder_its_curve_and_a_full_state(trained):
    out, state = trained
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == "LatentVideoDiffusion" and config["candidate"] == "A"
    assert config["trained_steps"] > 0 and config["trained_cpu_minutes"] >= 0.15
    weights = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float16 for k, v in weights.items() if v.is_floating_point())
    saved = torch.load(state, map_location="cpu", weights_only=False)
    assert {"model", "opt", "ema", "rng", "generator", "st"} <= set(saved)
    rows = saved["st"]["rows"]
    assert rows and all(r["weights"] == "ema" for r in rows)
    assert {"shape_from_text", "shape_kept", "edge_sharpness"} <= set(rows[0])
    lines = (out / "learning_curve.csv").read_text().splitlines()
    assert len(lines) == len(rows) + 1
    assert (out / "learning_curve.png").stat().st_size > 1000 and (out / "samples_eval.png").exists()


def test_the_exported_weights_are_the_ema_and_the_model_keeps_its_raw_weights(tmp_path):
    from diffusers.training_utils import EMAModel

    from vdemo.train import make_tokenizer
    from vdemo.train_v2 import export

    model = TinyV2Backend.random().model
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    ema = EMAModel(model.parameters())
    ema.shadow_params = [torch.full_like(p, 0.25) for p in ema.shadow_params]
    export(tmp_path, model, ema, make_tokenizer(), {"cpu_s": 60.0, "step": 7})
    exported = load_file(str(tmp_path / "diffusion_pytorch_model.safetensors"))
    names = {k for k, _ in model.named_parameters()}
    assert all(torch.all(exported[k] == 0.25) for k in names)
    assert torch.equal(exported["latent_scale"].float(), raw["latent_scale"])  # buffers as they are
    assert all(torch.equal(v, raw[k]) for k, v in model.state_dict().items())  # restored after the export
    assert json.loads((tmp_path / "config.json").read_text())["trained_steps"] == 7


def test_a_run_resumes_from_its_full_state_and_from_the_compact_one(tmp_path, trained):
    out, state = trained
    work = tmp_path / "state.pt"
    work.write_bytes(state.read_bytes())
    before = torch.load(work, map_location="cpu", weights_only=False)["st"]
    train_v2_main([*FAST, "--minutes", "0.02", "--eval-every", "100", "--out", str(tmp_path / "o"), "--state",
                   str(work), "--p-depth-other", "0.5"])
    after = torch.load(work, map_location="cpu", weights_only=False)["st"]
    assert after["step"] > before["step"] and after["cpu_s"] > before["cpu_s"]
    assert after["p_depth_other"] == 0.5 and after["mix_changes"] == [round(before["cpu_s"] / 60, 3)]
    assert after["p_dragged"] == 0.0
    again = tmp_path / "again.pt"
    again.write_bytes(work.read_bytes())
    train_v2_main([*FAST, "--minutes", "0.02", "--eval-every", "100", "--out", str(tmp_path / "o"), "--state",
                   str(again), "--p-depth-other", "0.5", "--p-dragged", "0.5"])
    dragged = torch.load(again, map_location="cpu", weights_only=False)["st"]
    assert dragged["p_dragged"] == 0.5 and dragged["mix_changes"] == [*after["mix_changes"],
                                                                       round(after["cpu_s"] / 60, 3)]
    train_v2_main([*FAST, "--minutes", "0.02", "--eval-every", "100", "--out", str(tmp_path / "o"), "--state",
                   str(again), "--p-depth-other", "0.5", "--p-dragged", "0.5"])  # the same mix again: no change
    resumed = torch.load(again, map_location="cpu", weights_only=False)["st"]
    assert resumed["p_dragged"] == 0.5 and resumed["mix_changes"] == dragged["mix_changes"]
    assert after["rows"][:len(before["rows"])] == before["rows"]

    compact = tmp_path / "compact.pt"
    train_v2_main(["--save-compact", "--state", str(work), "--compact", str(compact)])
    small = torch.load(compact, map_location="cpu", weights_only=False)
    assert "opt" not in small
    assert all(v.dtype == torch.bfloat16 for v in small["model"].values() if v.is_floating_point())
    assert "shadow_params" not in small["ema"] and small["ema"]["optimization_step"] > 0
    exported = load_file(str(tmp_path / "o" / "diffusion_pytorch_model.safetensors"))
    out2 = tmp_path / "o2"
    out2.mkdir()
    (out2 / "diffusion_pytorch_model.safetensors").write_bytes(
        (tmp_path / "o" / "diffusion_pytorch_model.safetensors").read_bytes())
    train_v2_main([*FAST, "--minutes", "0", "--out", str(out2), "--state", str(tmp_path / "fresh.pt"), "--compact",
                   str(compact)])  # no step: what the resume rebuilt is what gets saved
    resumed = torch.load(tmp_path / "fresh.pt", map_location="cpu", weights_only=False)
    assert resumed["st"]["step"] == after["step"]
    names = [k for k, _ in TinyV2Backend.random().model.named_parameters()]
    shadow = dict(zip(names, resumed["ema"]["shadow_params"]))  # the EMA is the exported one, the counters kept
    assert all(torch.equal(shadow[k], exported[k].float()) for k in names)
    assert resumed["ema"]["optimization_step"] == small["ema"]["optimization_step"]
    train_v2_main([*FAST, "--minutes", "0.01", "--eval-every", "100", "--out", str(out2), "--state",
                   str(tmp_path / "fresh.pt")])
    assert torch.load(tmp_path / "fresh.pt", map_location="cpu", weights_only=False)["st"]["step"] > after["step"]


def test_the_train_cli_forwards_arch_v2(capsys):
    with pytest.raises(SystemExit):
        from vdemo.train import main

        main(["--arch", "v2", "--help"])
    assert "--save-compact" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- the backend
@pytest.fixture(scope="module")
def backend(trained):
    return TinyV2Backend.from_pretrained(trained[0])


def _request(**kw) -> GenerationRequest:
    base = dict(prompt="a red circle moves left", num_frames=5, height=64, width=64, num_steps=3, guidance=2.0)
    return GenerationRequest(**{**base, **kw})


@pytest.mark.parametrize("mode", ATTENTION_MODES)
def test_generates_frames_with_a_preview_per_step_in_every_mode(backend, mode):
    events = list(VideoPipeline(backend).generate(_request(attention_mode=mode)))
    progress = [e for e in events if isinstance(e, Progress)]
    done = events[-1]
    assert isinstance(done, Done)
    assert done.frames.shape == (5, 64, 64, 3) and done.frames.dtype == np.uint8
    assert len(progress) == 3
    assert all(p.preview.shape == (5, 64, 64, 3) for p in progress)


@pytest.mark.parametrize("sampler", ["DDIM", "Euler", "DPM++ 2M", "UniPC"])
def test_every_sampler_steps_the_latents(backend, sampler):
    done = list(VideoPipeline(backend).generate(_request(sampler=sampler)))[-1]
    assert isinstance(done, Done) and done.frames.shape == (5, 64, 64, 3)
    assert done.frames.std() > 0  # not a constant image


def test_the_latent_is_a_quarter_of_the_frame_and_the_decoder_maps_it_back(backend):
    req = _request(height=128, width=128)
    shape = backend.latent_shape(req)
    assert shape == (1, 5, 4, 32, 32)
    frames = backend.decode(torch.zeros(shape))
    assert frames.shape == (5, 128, 128, 3)


def _randomised() -> TinyV2Backend:
    b = TinyV2Backend.random(seed=3)
    b.bf16 = False
    return b


@pytest.mark.parametrize("dragged", [False, True], ids=["plain", "cut-and-drag reference"])
def test_causal_modes_never_let_a_frame_see_later_ones_and_full_does(dragged):
    b = _randomised() if not dragged else TinyV2Backend.random(seed=3, reference=True)
    b.bf16 = False
    req = _request(num_frames=4, **({"image": _square_scene(), "strokes": RIGHT} if dragged else {}))
    cond = b.prepare(req)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b.latent_shape(req), generator=g)
    changed = x.clone()
    changed[:, -1] += 1.0
    t = torch.tensor([700])
    for mode in ("causal", "sparse_causal"):
        a, c = b.predict(x, t, cond, 2.0, mode), b.predict(changed, t, cond, 2.0, mode)
        assert torch.allclose(a[:, :-1], c[:, :-1], atol=1e-5), mode
    a, c = b.predict(x, t, cond, 2.0, "full"), b.predict(changed, t, cond, 2.0, "full")
    assert not torch.allclose(a[:, :-1], c[:, :-1], atol=1e-4)


def test_guidance_one_is_the_conditional_prediction_and_guidance_extrapolates_from_nothing():
    b = _randomised()
    req = _request()
    cond = b.prepare(req)
    x, t = torch.randn(b.latent_shape(req), generator=torch.Generator().manual_seed(1)), torch.tensor([500])
    conditional = b.predict(x, t, cond, 1.0, "full")
    guided = b.predict(x, t, cond, 3.0, "full")
    uncond = b.model.denoise(x, t, cond["ids"][1:], cond["controls"][1:], cond["flags"][1:])
    assert torch.allclose(guided, uncond + 3.0 * (conditional - uncond), atol=1e-4)
    assert cond["ids"][1, 0] == 2 and (cond["ids"][1, 1:] == 0).all()  # the empty caption it was trained with
    assert not cond["controls"][1].any() and not cond["flags"][1].any()


def test_a_first_frame_enters_as_its_own_latents_and_changes_the_prediction():
    b = _randomised()
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = (220, 40, 40)
    with_image = b.prepare(_request(image=image))
    plain = b.prepare(_request())
    assert with_image["known_z"][0, 0].abs().sum() > 0 and not with_image["known_z"][0, 1:].any()
    assert not plain["known_z"].any()
    assert torch.equal(with_image["known_z"], b.model.known_latents(with_image["controls"]))
    x, t = torch.randn(b.latent_shape(_request()), generator=torch.Generator().manual_seed(2)), torch.tensor([900])
    assert not torch.allclose(b.predict(x, t, with_image, 2.0, "full"), b.predict(x, t, plain, 2.0, "full"))


def test_every_modality_is_accepted(backend):
    F = 5
    pose = np.zeros((F, 64, 64, 3), np.uint8)
    depth = np.full((F, 64, 64), 128, np.uint8)
    from vdemo.strokes import Stroke

    stroke = Stroke(points=((0.2, 0.5), (0.8, 0.5)), radius=0.08)
    for kw in ({"pose": pose}, {"depth": depth}, {"strokes": (stroke,)}, {"image": np.zeros((64, 64, 3), np.uint8)}):
        done = list(VideoPipeline(backend).generate(_request(num_steps=2, **kw)))[-1]
        assert isinstance(done, Done), kw


def test_sizes_must_be_square_multiples_of_32_within_its_range(backend):
    pipe = VideoPipeline(backend)
    for kw, message in (({"height": 96, "width": 128}, "square"), ({"height": 80, "width": 80}, "multiple of 32"),
                        ({"height": 320, "width": 320}, "64–256")):
        with pytest.raises(RequestError, match=message):
            list(pipe.generate(_request(**kw)))


def test_registry_entry_and_loading_by_name(monkeypatch, trained, tmp_path):
    assert "tiny-v2" in backend_names()
    info = backend_info("tiny-v2")
    assert info.default_size == (128, 128) and info.limits.side_multiple == 32
    assert info.attention_modes == ATTENTION_MODES and "latent" in info.notes
    monkeypatch.setenv("VDEMO_TINY_V2_DIR", str(trained[0]))
    assert weights_present("tiny-v2")
    load_backend.cache_clear()
    try:
        assert isinstance(load_backend("tiny-v2"), TinyV2Backend)
    finally:
        load_backend.cache_clear()
    monkeypatch.setenv("VDEMO_TINY_V2_DIR", str(tmp_path / "nothing"))
    assert not weights_present("tiny-v2")
    with pytest.raises(ModelNotFound, match="python -m vdemo.train --arch v2"):
        TinyV2Backend.from_pretrained(tmp_path / "nothing")


def test_a_v1_folder_is_refused_with_a_clear_reason(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "TinyVideoUNet"}))
    with pytest.raises(ModelNotFound, match="does not hold a v2 model.*choose --backend tiny"):
        TinyV2Backend.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------- reference latents
def test_reference_latents_are_the_first_known_frame_from_there_on():
    from vdemo.models.v2.latent import reference_latents

    B, Fr = 3, 4
    known_z = torch.randn(B, Fr, 4, 2, 2)
    controls = torch.zeros(B, Fr, 9, 8, 8)
    controls[0, 0, 3] = 1  # image-to-video: frame 0
    controls[1, 2, 3] = 1  # a keyframe at 2 and one at 3
    controls[1, 3, 3] = 1
    ref = reference_latents(known_z, controls)  # clip 2: nothing known
    assert ref.shape == known_z.shape
    assert all(torch.equal(ref[0, f], known_z[0, 0]) for f in range(Fr))
    assert not ref[1, :2].any() and torch.equal(ref[1, 2], known_z[1, 2]) and torch.equal(ref[1, 3], known_z[1, 2])
    assert not ref[2].any()


def test_widening_the_input_for_the_reference_keeps_the_model_function():
    from vdemo.models.v2 import build
    from vdemo.models.v2.latent import widen_input

    torch.manual_seed(0)
    old = build("A", tiny=True)
    with torch.no_grad():
        old.unet.conv_out.weight.normal_(std=0.05)
    new = build("A", tiny=True, reference=True)
    state = old.state_dict()
    assert widen_input(state, new) and not widen_input(state, new)
    new.load_state_dict(state)
    z = torch.randn(1, 3, 4, 8, 8)
    controls = torch.zeros(1, 3, 9, 32, 32)
    controls[:, 0, :3] = torch.rand(1, 3, 32, 32) * 2 - 1
    controls[:, 0, 3] = 1
    args = (z, torch.tensor([500]), torch.tensor([[2, 5, 7] + [0] * 21]), controls, torch.tensor([[1.0, 1, 0, 0, 0]]))
    with torch.no_grad():
        assert torch.allclose(old.denoise(*args), new.denoise(*args), atol=1e-6)
    with pytest.raises(ValueError, match="cannot widen"):
        widen_input({"unet.conv_in.weight": torch.zeros(1, 1, 3, 3)}, new)


def test_with_the_reference_a_keyframe_still_never_reaches_earlier_frames_in_causal_mode():
    from vdemo.models.v2 import build

    torch.manual_seed(1)
    b = TinyV2Backend(build("A", tiny=True, reference=True), TinyV2Backend.random().tokenizer, source="test")
    b.bf16 = False
    with torch.no_grad():
        b.model.unet.conv_out.weight.normal_(std=0.05)
        b.model.unet.conv_in.weight.normal_(std=0.05)
    x = torch.randn(b.latent_shape(_request(num_frames=4)), generator=torch.Generator().manual_seed(0))
    outs = []
    for colour in ((220, 40, 40), (40, 40, 220)):
        key = np.zeros((64, 64, 3), np.uint8)
        key[20:44, 20:44] = colour
        cond = b.prepare(_request(num_frames=4, keyframes=((2, key),)))
        outs.append({m: b.predict(x, torch.tensor([600]), cond, 2.0, m) for m in ("causal", "full")})
    assert torch.allclose(outs[0]["causal"][:, :2], outs[1]["causal"][:, :2], atol=1e-5)
    assert not torch.allclose(outs[0]["causal"][:, 2:], outs[1]["causal"][:, 2:], atol=1e-4)
    assert not torch.allclose(outs[0]["full"][:, :2], outs[1]["full"][:, :2], atol=1e-4)


def test_the_long_video_eval_and_sdedit_run_on_v2_at_its_own_size(trained, tmp_path):
    """`--metrics long` measures the model it is given (it used to refuse v2): clips, requests and the SDEdit check
    at v2's frame size, through its encoder."""
    from vdemo.long_eval import main

    out = tmp_path / "drift.json"
    assert main(["--backend", "tiny-v2", "--model-dir", str(trained[0]), "--cases", "1", "--steps", "2",
                 "--lengths", "32", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["settings"]["backend"] == "tiny-v2" and results["settings"]["steps"] == 2
    assert set(results["long"]) == {"autoregressive@32", "hierarchical@32"}
    assert all(len(r["series"]["flicker"]) == 32 // 16 for r in results["long"].values())
    assert set(results["edit"]) == {"strength 0.6", "strength 0.8"}
    assert all(0.0 <= e["new_colour"] <= 1.0 for e in results["edit"].values())


def test_garbage_reaches_the_user_as_one_line_not_a_trace(backend):
    """tiny-v2 inherits the built-in model's checks: a prompt of words it does not know, a wrong-shaped image."""
    pipe = VideoPipeline(backend)
    with pytest.raises(RequestError, match="did not understand 'cat'") as raised:
        list(pipe.generate(_request(prompt="purple cat")))
    assert "\n" not in str(raised.value)
    with pytest.raises(RequestError, match="image"):
        _request(image=np.zeros((64, 64), np.uint8))


def test_the_diagnosis_measures_what_frame_0_and_depth_tell_about_later_frames(trained, capsys):
    from vdemo.backends.tiny_v2 import load_v2_model
    from vdemo.models.tokenizer import load_tokenizer
    from vdemo.train_v2 import conditioning_gain

    out, _ = trained
    model = load_v2_model(out)
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)  # zero-initialised: make the conditions show
    gain = conditioning_gain(model, load_tokenizer(out / "tokenizer"), cases=3, timesteps=(500, 900))
    assert set(gain) == {"t", "nothing", "frame0", "frame0+depth"} and gain["t"] == [500, 900]
    assert all(len(v) == 2 and all(e > 0 for e in v) for k, v in gain.items() if k != "t")
    assert gain["frame0"] != gain["frame0+depth"] != gain["nothing"]  # each condition reaches the model
    train_v2_main(["--diagnose", "--out", str(out), "--threads", "1", "--cases", "3", "--steps", "2"])
    printed = capsys.readouterr().out
    assert "frame0+depth:" in printed and "nothing:" in printed
    assert "frame0+motion:" in printed and "frame0+motion+dragged-reference: kept" in printed
    assert "DDIM 25 steps, guidance 2, eta 1: shape from text" in printed
    with pytest.raises(SystemExit, match="no v2 model in"):
        train_v2_main(["--diagnose", "--out", str(out / "missing")])


class _PixelStub(torch.nn.Module):
    """A stand-in v2 model in pixel space (encode = decode = identity) whose prediction is the truth (`oracle`) or
    an empty frame: checks what the shape diagnosis measures, not a trained model."""

    def __init__(self, oracle: bool):
        super().__init__()
        self.oracle, self.cfg, self.seen, self.references = oracle, type("Cfg", (), {"size": 64})(), {}, []

    def set_attention_mode(self, mode):
        pass

    def encode(self, x):
        self.x0 = x
        return x

    def decode(self, z):
        return z

    def denoise(self, zt, t, ids, controls, flags):
        self.seen[float(flags[0].sum())] = controls[:, :, 8].amax().item()  # stroke channel per condition
        return self.x0[:, -zt.shape[1]:] if self.oracle else torch.full_like(zt, -1.0)

    def generate(self, ids, controls, flags, steps, guidance, generator, reference=None):
        self.seen[float(flags[0].sum())] = controls[:, :, 8].amax().item()
        self.references.append(reference)
        x0 = torch.from_numpy(np.stack([c.frames for c in eval_cases(len(ids), 8, 64)])).permute(0, 1, 4, 2, 3)
        return x0.float() / 127.5 - 1.0 if self.oracle else torch.full((len(ids), 8, 3, 64, 64), -1.0)


def test_the_shape_diagnosis_reads_one_step_predictions_and_sampled_clips_with_the_motion_given():
    from vdemo.bakeoff import BakeoffConfig
    from vdemo.train import make_tokenizer
    from vdemo.train_v2 import kept_given_motion, shape_by_noise

    tokenizer, cfg = make_tokenizer(), BakeoffConfig(size=64, steps=2, bf16=False)
    oracle = shape_by_noise(_PixelStub(True), tokenizer, cases=3, timesteps=(500, 900))
    assert oracle == {"t": [500, 900], "caption": [1.0, 1.0], "frame0": [1.0, 1.0], "frame0+motion": [1.0, 1.0]}
    blind = shape_by_noise(_PixelStub(False), tokenizer, cases=3, timesteps=(500,))
    assert blind == {"t": [500], "caption": [0.0], "frame0": [0.0], "frame0+motion": [0.0]}
    stub = _PixelStub(True)
    kept = kept_given_motion(stub, tokenizer, cases=3, cfg=cfg)
    assert list(kept) == ["frame0", "frame0+dragged-reference", "frame0+motion", "frame0+motion+dragged-reference"]
    assert all(row["shape_kept"] == 1.0 and row["centre_error_px"] < 3.0 for row in kept.values())
    # frame 0 only: no stroke map; frame 0 + motion: text and stroke flags on and a stroke map drawn
    assert stub.seen[1.0] == 0.0 and stub.seen[3.0] > 0.5
    dragged = stub.references[1]  # the cut-and-drag frames (the stub's latents are pixels) reach the model
    assert [r is None for r in stub.references] == [True, False, True, False] and dragged.shape == (3, 8, 3, 64, 64)
    blind = kept_given_motion(_PixelStub(False), tokenizer, cases=3, cfg=cfg)
    assert all(row == {"shape_kept": 0.0, "centre_error_px": 64 * 2 ** 0.5} for row in blind.values())


def test_a_given_reference_replaces_the_first_frames_reference_latents_in_the_conditioned_half_only():
    from vdemo.models.v2 import build
    from vdemo.models.v2.latent import reference_latents

    torch.manual_seed(0)
    model = build("A", tiny=True, size=64, reference=True).eval()
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)  # zero-initialised: let the inputs show
    controls = torch.zeros(1, 4, 9, 64, 64)
    controls[:, 0, :3], controls[:, 0, 3] = torch.rand(1, 3, 64, 64) * 2 - 1, 1.0  # frame 0 known
    ids, flags, t = torch.full((1, 4), 2), torch.tensor([[0.0, 1, 0, 0, 0]]), torch.tensor([900])
    zt = torch.randn(1, 4, 4, 16, 16)
    with torch.no_grad():
        default = model.denoise(zt, t, ids, controls, flags)
        same = model.denoise(zt, t, ids, controls, flags,
                             reference=reference_latents(model.known_latents(controls), controls))
        other = model.denoise(zt, t, ids, controls, flags, reference=torch.randn(1, 4, 4, 16, 16))
        assert torch.allclose(default, same) and not torch.allclose(default, other, atol=1e-4)
        g = [model.generate(ids, controls, flags, 2, 1.0, torch.Generator().manual_seed(0), reference=r)
             for r in (None, torch.randn(1, 4, 4, 16, 16))]
        assert not torch.allclose(*g, atol=1e-4)
        calls, denoise = [], model.denoise

        def spy(*args, **kwargs):
            calls.append((bool(args[4].any()), kwargs.get("reference") is not None))  # (flags set, reference given)
            return denoise(*args, **kwargs)
        model.denoise = spy
        model.generate(ids, controls, flags, 2, 2.0, torch.Generator().manual_seed(0), reference=zt.clone())
        assert sorted(set(calls)) == [(False, False), (True, True)]  # guidance's unconditioned half gets none
    with pytest.raises(ValueError, match="built without reference latents"):
        build("A", tiny=True, size=64, reference=False).denoise(zt, t, ids, controls, flags, reference=zt)


def test_dragged_examples_carry_their_cut_and_drag_reference_into_the_training_loss(tmp_path):
    from vdemo.models.v2 import build
    from vdemo.train import TrainConfig, make_tokenizer
    from vdemo.train_v2 import make_batch

    tokenizer, rng = make_tokenizer(), np.random.default_rng(0)
    batch = make_batch(rng, 4, 8, 64, tokenizer, TrainConfig(size=64), p_dragged=0.5)
    dragged = batch["dragged"].numpy()
    assert dragged.any() and not dragged.all() and batch["reference_frames"].shape == (4, 8, 3, 64, 64)
    assert (batch["reference_frames"][~batch["dragged"]] == -1).all()  # black: unused there
    for i in np.flatnonzero(dragged):  # frame 0 known, strokes drawn, the reference is frame 0's object moved
        assert batch["controls"][i, 0, 3].amax() == 1 and batch["controls"][i, 1:, 3].amax() == 0
        assert batch["controls"][i, :, 8].amax() > 0.5
        assert torch.allclose(batch["reference_frames"][i, 0], batch["x0"][i, 0], atol=0.2)
    assert "reference_frames" not in make_batch(rng, 4, 8, 64, tokenizer, TrainConfig(size=64))
    with pytest.raises(SystemExit):
        train_v2_main(["--p-dragged", "1.5", "--minutes", "0", "--out", str(tmp_path / "o"), "--state",
                       str(tmp_path / "s.pt")])

    torch.manual_seed(0)
    model = build("A", tiny=True, size=64, reference=True)
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)
    model.freeze_autoencoder(batch["x0"])
    losses = []
    with torch.no_grad():
        for refs in (batch["reference_frames"], torch.zeros_like(batch["reference_frames"])):
            losses.append(float(model.training_loss({**batch, "reference_frames": refs},
                                                    torch.Generator().manual_seed(0), 1.0)))
    assert losses[0] != losses[1]  # the dragged reference reaches the denoiser


def test_clip_drag_moves_frame_0s_object_along_its_path_over_the_background():
    from vdemo.bakeoff import detected_shape
    from vdemo.train_v2 import centre_error, clip_drag

    for clip in eval_cases(3, 8, 64):
        dragged = clip_drag(clip)
        assert dragged.shape == clip.frames.shape and dragged.dtype == np.uint8
        assert np.abs(dragged[0].astype(int) - clip.frames[0]).mean() < 2  # frame 0 is frame 0
        assert detected_shape(dragged[-1]) == detected_shape(clip.frames[0])
        # the object ends where the true clip's does: as close as the truth itself is to its path's end
        assert centre_error([dragged], [clip]) < centre_error([clip.frames], [clip]) + 1.0
        assert centre_error([np.stack([clip.frames[0]] * 8)], [clip]) > 10  # not moving would be far off


def test_ddim_eta_makes_v2_sampling_stochastic_and_eta_0_stays_deterministic():
    model = TinyV2Backend.random().model.eval()
    ids = torch.full((1, 4), 2)
    controls, flags = torch.zeros(1, 4, 9, 64, 64), torch.zeros(1, 5)

    def sample(eta, seed):
        return model.generate(ids, controls, flags, 3, 1.0, torch.Generator().manual_seed(seed), eta=eta)
    with torch.no_grad():
        assert torch.equal(sample(0.0, 0), sample(0.0, 0)) and torch.equal(sample(1.0, 0), sample(1.0, 0))
        assert not torch.allclose(sample(0.0, 0), sample(1.0, 0), atol=1e-4)


def test_known_latents_encode_only_the_known_frames_and_equal_encoding_them_all():
    import torch.nn.functional as F

    model = TinyV2Backend.random().model
    controls = torch.randn(2, 5, 9, 64, 64)
    controls[:, :, 3] = 0
    controls[0, 0, 3] = 1
    controls[1, 2, 3, :10] = 1  # a partly known frame
    seen = []
    hook = model.ae.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    got = model.known_latents(controls)
    assert seen == [2]  # two known frames of ten
    model.known_latents(torch.zeros_like(controls))  # text-to-video and guidance's "nothing": no encoder call
    assert seen == [2]
    hook.remove()
    mask = F.max_pool2d(controls[:, :, 3:4].flatten(0, 1), 4).unflatten(0, (2, 5))
    assert torch.allclose(got, model.encode(controls[:, :, :3]) * mask, atol=1e-6)


def _square_scene() -> np.ndarray:
    image = np.zeros((64, 64, 3), np.uint8)
    image[12:28, 12:28] = (220, 40, 40)
    return image


RIGHT = (Stroke(((20 / 64, 20 / 64), (44 / 64, 20 / 64)), 0.1),)  # the square, 24 px right


def test_strokes_on_a_first_frame_give_the_conditioned_half_the_cut_and_drag_reference():
    from vdemo.models.v2.latent import reference_latents
    from vdemo.strokes import drag_frames

    b = TinyV2Backend.random(seed=3, reference=True)
    b.bf16 = False
    req = _request(prompt="", image=_square_scene(), strokes=RIGHT)
    cond = b.prepare(req)
    dragged = drag_frames(_square_scene(), RIGHT, 5)
    assert np.array_equal(cond["dragged"], dragged) and (dragged[-1][12:28, 36:52] == (220, 40, 40)).all()
    pixels = torch.from_numpy(dragged).permute(0, 3, 1, 2)[None].float() / 127.5 - 1.0
    assert torch.allclose(cond["reference"][:1], b.model.encode(pixels))  # the conditioned half: the dragged frames
    assert torch.equal(cond["reference"][1:], reference_latents(cond["known_z"][1:], cond["controls"][1:]))
    off = b.prepare(replace(req, drag_reference=False))
    assert off["reference"] is None and off["dragged"] is None
    x, t = torch.randn(b.latent_shape(req), generator=torch.Generator().manual_seed(4)), torch.tensor([700])
    guided, plain = b.predict(x, t, cond, 2.0, "full"), b.predict(x, t, off, 2.0, "full")
    assert not torch.allclose(guided, plain, atol=1e-4)
    uncond = b.model.denoise(x, t, cond["ids"][1:], cond["controls"][1:], cond["flags"][1:])
    conditional = b.predict(x, t, cond, 1.0, "full")
    assert torch.allclose(guided, uncond + 2.0 * (conditional - uncond), atol=1e-4)  # the unconditioned half: its own


def test_the_manifest_says_which_reference_ran_and_a_stroke_on_nothing_is_warned_about():
    from vdemo.backends.tiny_v2 import NOTHING_TO_DRAG_WARNING

    b = TinyV2Backend.random(seed=3, reference=True)
    pipe = VideoPipeline(b)

    def manifest(**kw):
        return list(pipe.generate(_request(prompt="", image=_square_scene(), num_steps=2, **kw)))[-1].manifest

    assert manifest(strokes=RIGHT)["reference"] == "cut-and-drag along the strokes"
    assert manifest(strokes=RIGHT)["warnings"] == []
    assert manifest(strokes=RIGHT, drag_reference=False)["reference"] == "first frame"
    on_nothing = manifest(strokes=(Stroke(((0.9, 0.9), (0.6, 0.9)), 0.05),))
    assert on_nothing["reference"] == "first frame" and on_nothing["warnings"] == [NOTHING_TO_DRAG_WARNING]
    assert manifest(strokes=(Stroke(((20 / 64, 20 / 64),), 0.1),))["warnings"] == []  # an anchor drags nothing
    with pytest.raises(RequestError, match="drag_reference must be true or false, got 'yes'"):
        _request(drag_reference="yes")
    assert "reference" not in list(VideoPipeline(_randomised()).generate(_request(num_steps=2)))[-1].manifest
    text_only = list(pipe.generate(_request(num_steps=2)))[-1].manifest
    assert text_only["reference"] == "none" and text_only["warnings"] == []  # no known frame: no reference at all


def test_a_planned_path_from_the_prompt_drags_the_first_frames_object_too(backend):
    assert backend.planner is not None  # assets/tiny/planner ships with the repository and tiny-v2 uses it
    image = np.zeros((64, 64, 3), np.uint8)
    image[24:40, 24:40] = (220, 40, 40)  # a red square in the middle
    done = list(VideoPipeline(backend).generate(_request(prompt="a red square moves left", image=image)))[-1]
    assert done.manifest["motion_plan"] and done.manifest["reference"] == "cut-and-drag along the strokes"


def test_the_cli_drags_by_default_and_no_drag_turns_it_off(trained, tmp_path):
    from PIL import Image

    from vdemo.__main__ import main as cli

    Image.fromarray(_square_scene()).save(tmp_path / "first.png")
    (tmp_path / "strokes.json").write_text(json.dumps([{"points": [list(p) for p in RIGHT[0].points],
                                                        "radius": RIGHT[0].radius}]))
    base = ["generate", "--backend", "tiny-v2", "--model-dir", str(trained[0]), "--image", str(tmp_path / "first.png"),
            "--strokes", str(tmp_path / "strokes.json"), "--frames", "4", "--steps", "1", "--size", "64"]
    for flags, reference in (([], "cut-and-drag along the strokes"), (["--no-drag"], "first frame")):
        out = tmp_path / (flags[0][2:] if flags else "drag")
        assert cli(base + flags + ["--out", str(out / "v.mp4")]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["reference"] == reference and manifest["request"]["drag_reference"] is (not flags)


def test_the_cli_takes_size_steps_and_guidance_from_the_backend(trained, tmp_path):
    """Left out, --size/--steps/--guidance are the chosen backend's own (v2: 128 px, 10 steps, 2.0), not v1's."""
    from vdemo.__main__ import main as cli

    out = tmp_path / "v.mp4"
    assert cli(["generate", "--backend", "tiny-v2", "--model-dir", str(trained[0]), "--prompt", "a red circle",
                "--frames", "4", "--out", str(out)]) == 0
    request = json.loads((tmp_path / "manifest.json").read_text())["request"]
    assert (request["height"], request["width"], request["num_steps"], request["guidance"]) == (128, 128, 10, 2.0)


@pytest.mark.parametrize("sampler", ["DDIM", "Euler a", "DPM++ 2M", "PNDM", "DEIS"])
def test_known_frames_come_out_as_their_own_latents_and_every_step_sees_them_clean(sampler):
    """A first frame and a keyframe: replaced in every x0 prediction by their own latents, so the final sample holds
    exactly those (it decodes to the autoencoder's reconstruction of the given frames, not to the model's redrawing
    of them), on any sampler; the other frames are still the model's, drawn beside clean known frames."""
    b = _randomised()
    req = _request(image=_square_scene(), keyframes=((4, np.full((64, 64, 3), 90, np.uint8)),), sampler=sampler,
                   num_steps=4)
    known_z = b.prepare(req)["known_z"][:1]  # (1, F, C, h, w): frames 0 and 4 set, the rest 0
    decoded, decode = [], b.decode
    b.decode = lambda x0: decoded.append(x0.clone()) or decode(x0)
    list(VideoPipeline(b).generate(req))
    final = decoded[-1]
    assert torch.allclose(final[:, [0, 4]], known_z[:, [0, 4]], atol=1e-5)
    assert all(torch.allclose(x0[:, [0, 4]], known_z[:, [0, 4]], atol=1e-5) for x0 in decoded)  # every preview too
    assert b.known_sample(b.prepare(_request())) is None  # text only: nothing known, the prediction is the model's
    decoded.clear()
    list(VideoPipeline(b).generate(replace(req, keep_known=False)))  # the model's own prediction everywhere
    plain = decoded[-1]
    assert (plain[:, 0] - known_z[:, 0]).abs().max() > 0.05  # the model redraws frame 0 its own way...
    assert not torch.allclose(plain[:, 1:4], final[:, 1:4], atol=1e-4)  # ...and the others saw that, not the clean one


def test_adding_the_text_velocity_keeps_the_model_its_optimiser_moments_and_its_ema():
    from diffusers.training_utils import EMAModel

    from vdemo.models.v2 import build
    from vdemo.train_v2 import add_velocity, param_groups, split_velocity_group

    torch.manual_seed(0)
    old = build("A", tiny=True, reference=True)
    with torch.no_grad():
        old.unet.conv_out.weight.normal_(std=0.05)
        for bias in old.unet.dist_bias:
            bias.strength.normal_(std=0.1)
    opt = torch.optim.AdamW(old.parameters(), lr=1e-3)
    z = torch.randn(1, 3, 4, 8, 8)
    controls = torch.zeros(1, 3, 9, 32, 32)
    args = (z, torch.tensor([500]), torch.tensor([[2, 5, 7] + [0] * 21]), controls, torch.tensor([[1.0, 0, 0, 0, 0]]))
    old.denoise(*args).square().mean().backward()
    opt.step()
    ema = EMAModel(old.parameters())
    saved = {"model": old.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict()}
    new = build("A", tiny=True, reference=True, velocity=True)
    assert add_velocity(saved, new) and not add_velocity(saved, new)
    new.load_state_dict(saved["model"])
    new_opt = torch.optim.AdamW(param_groups(new), lr=1e-3)  # the velocity maps in a group of their own
    new_opt.load_state_dict(saved["opt"])
    first = next(iter(new_opt.state.values()))
    assert torch.equal(first["exp_avg"], next(iter(opt.state.values()))["exp_avg"])  # moments kept
    assert [len(g["params"]) for g in new_opt.param_groups] == [len(list(old.parameters())), 2 * 7]
    one_group = torch.optim.AdamW(new.parameters(), lr=1e-3).state_dict()  # as saved before the groups were split
    split_velocity_group(one_group, new)
    split = [g["params"] for g in new_opt.state_dict()["param_groups"]]
    assert [g["params"] for g in one_group["param_groups"]] == split
    new_ema = EMAModel(new.parameters())
    new_ema.load_state_dict(saved["ema"])
    assert len(new_ema.shadow_params) == len(list(new.parameters()))
    old_shadow = EMAModel(old.parameters()).shadow_params
    assert all(torch.equal(a, b) for a, b in zip(new_ema.shadow_params, old_shadow))  # same order, same weights
    assert all(not s.any() for s in new_ema.shadow_params[len(old_shadow):])  # the velocity maps' EMA starts at 0
    with torch.no_grad():
        assert torch.allclose(old.denoise(*args), new.denoise(*args), atol=1e-6)  # zero-initialised: same function
        new.unet.velocity[0].bias.fill_(0.3)
        assert not torch.allclose(old.denoise(*args), new.denoise(*args), atol=1e-3)
        new.set_attention_mode("spatial")
        old.set_attention_mode("spatial")
        assert torch.allclose(old.denoise(*args), new.denoise(*args), atol=1e-5)  # frames do not mix: no motion


def test_a_run_gains_the_text_velocity_once_keeps_it_and_ships_it(tmp_path, trained):
    out, state = trained
    work = tmp_path / "state.pt"
    work.write_bytes(state.read_bytes())
    before = torch.load(work, map_location="cpu", weights_only=False)["st"]
    run = [*FAST, "--minutes", "0.02", "--eval-every", "100", "--out", str(tmp_path / "o"), "--state", str(work)]
    train_v2_main([*run, "--velocity"])
    after = torch.load(work, map_location="cpu", weights_only=False)
    assert after["st"]["velocity"] is True and after["st"]["mix_changes"] == [round(before["cpu_s"] / 60, 3)]
    assert after["st"]["velocity_lr_scale"] == 30.0 and len(after["opt"]["param_groups"]) == 2
    assert any(k.startswith("unet.velocity.") for k in after["model"])
    train_v2_main(run)  # without the flag: a state that has the velocity keeps it, and no change is recorded
    again = torch.load(work, map_location="cpu", weights_only=False)["st"]
    assert again["velocity"] is True and again["mix_changes"] == after["st"]["mix_changes"]
    assert json.loads((tmp_path / "o" / "config.json").read_text())["velocity"] is True
    backend = TinyV2Backend.from_pretrained(tmp_path / "o")
    assert backend.model.unet.velocity is not None
    done = list(VideoPipeline(backend).generate(_request(num_steps=2)))[-1]
    assert isinstance(done, Done) and done.frames.shape[0] == _request().num_frames


def test_direction_from_text_reads_the_detected_objects_motion():
    from vdemo.train_v2 import direction_from_text

    cases = [c for c in eval_cases(6, 8, 64) if c.objects[0]["motion"] != "still"]
    clips = [c.frames for c in cases]
    assert direction_from_text(clips, cases) == 1.0
    assert direction_from_text([c[::-1] for c in clips], cases) == 0.0  # played backwards: the opposite way


def test_the_velocity_loss_pulls_every_head_towards_the_clips_true_motion():
    from vdemo.models.v2 import build
    from vdemo.models.v2.latent import velocity_loss
    from vdemo.train import TrainConfig, make_tokenizer
    from vdemo.train_v2 import make_batch, motion_target

    cases = eval_cases(3, 8, 64)
    clip = next(c for c in cases if c.objects[0]["motion"] == "right")
    assert motion_target(clip, clip.caption)[0] > 0.2 and (motion_target(clip, "") == 0).all()
    two = next(world.make_clip(world.sample_spec(np.random.default_rng(i), "objects"), 4, 64) for i in range(99)
               if len(world.sample_spec(np.random.default_rng(i), "objects")["objects"]) == 2)
    assert np.isnan(motion_target(two, two.caption)).all()  # two motions: no single target
    torch.manual_seed(0)
    model = build("A", tiny=True, size=64, reference=True, velocity=True)
    ids = torch.tensor([[2, 5, 7] + [0] * 21, [3, 4, 0] + [0] * 21])
    with torch.no_grad():
        model.unet.velocity[0].bias.fill_(0.1)
        model.denoise(torch.randn(2, 3, 4, 16, 16), torch.tensor([500, 500]), ids, torch.zeros(2, 3, 9, 64, 64),
                      torch.ones(2, 5))
    biases = model.unet.dist_bias
    motion = torch.tensor([[0.25, -0.125], [float("nan"), float("nan")]])
    first = ((biases[0].velocity[0] - torch.tensor([4.0, -2.0])) / 16).square().mean()
    others = torch.tensor([((b.velocity[0] - torch.tensor([4.0, -2.0])) / 16).square().mean() for b in biases[1:]])
    torch.testing.assert_close(velocity_loss(biases, motion), (first + others.sum()) / len(biases))
    assert velocity_loss(biases, torch.full((2, 2), float("nan"))) == 0  # no captioned one-object clip: no target
    from types import SimpleNamespace

    still = [SimpleNamespace(velocity=torch.zeros(1, 2, 2)),
             SimpleNamespace(velocity=torch.tensor([[[4.0, -2.0]] * 2]))]
    # block 1 is still: ((4/16)² + (2/16)²) / 2 = 0.0390625 per head; block 2 is exact: 0; the mean over blocks
    assert velocity_loss(still, torch.tensor([[0.25, -0.125]])).item() == pytest.approx(0.0390625 / 2)

    batch = make_batch(np.random.default_rng(0), 4, 4, 64, make_tokenizer(), TrainConfig(size=64), p_dragged=0.5)
    assert batch["motion"].shape == (4, 2)
    model.ae_frozen.fill_(True)
    model.velocity_weight = 1.0
    model.training_loss({**batch, "motion": torch.tensor([[0.25, 0.0]] * 4)}, torch.Generator().manual_seed(0),
                        1.0).backward()
    assert model.unet.velocity[0].bias.grad.abs().sum() > 0


def test_a_fresh_clone_resumes_the_ema_from_the_weights_beside_the_compact_state(tmp_path, trained):
    """`--init assets/tiny_v2/train_state.pt --out runs/...`: the compact state's EMA is the model exported beside it,
    not whatever <out> holds (nothing, in a fresh clone)."""
    out, state = trained
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    weights = "diffusion_pytorch_model.safetensors"
    (shipped / weights).write_bytes((out / weights).read_bytes())
    train_v2_main(["--save-compact", "--state", str(state), "--compact", str(shipped / "train_state.pt")])
    fresh = tmp_path / "fresh.pt"
    train_v2_main([*FAST, "--minutes", "0", "--out", str(tmp_path / "elsewhere"), "--state", str(fresh), "--init",
                   str(shipped / "train_state.pt"), "--compact", str(tmp_path / "none.pt")])
    exported = load_file(str(shipped / "diffusion_pytorch_model.safetensors"))
    names = [k for k, _ in TinyV2Backend.random().model.named_parameters()]
    shadow = dict(zip(names, torch.load(fresh, map_location="cpu", weights_only=False)["ema"]["shadow_params"]))
    assert all(torch.equal(shadow[k], exported[k].float()) for k in names)


@pytest.mark.parametrize("flag", ["--velocity-loss", "--velocity-lr-scale", "--minutes", "--lr"])
def test_a_negative_rate_weight_or_budget_is_refused_with_a_message(flag, capsys, tmp_path):
    paths = ["--out", str(tmp_path / "o"), "--state", str(tmp_path / "s.pt"), "--compact", str(tmp_path / "c.pt")]
    with pytest.raises(SystemExit) as exit_info:
        train_v2_main([flag, "-0.1", "--minutes" if flag != "--minutes" else "--lr", "0", *paths])
    assert exit_info.value.code == 2
    assert f"{flag} must not be negative, got -0.1" in capsys.readouterr().err


def test_a_soup_of_two_exports_averages_each_tensor_keeps_bs_own_and_loads(tmp_path, trained, capsys):
    import hashlib
    import shutil

    from safetensors.torch import save_file

    out, state = trained
    work = tmp_path / "state.pt"
    work.write_bytes(state.read_bytes())
    later = tmp_path / "later"
    train_v2_main([*FAST, "--minutes", "0.02", "--eval-every", "100", "--out", str(later), "--state", str(work),
                   "--velocity"])
    a = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    # B: the later export moved well away from A (a few training steps move it by ~1e-3 only), so an average that
    # returned A or B or swapped the weights could not pass
    b = {k: v + 0.25 if k in a and v.is_floating_point() else v
         for k, v in load_file(str(later / "diffusion_pytorch_model.safetensors")).items()}
    save_file(b, str(later / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    soup_dir = tmp_path / "soup"
    train_v2_main(["--soup-a", str(out), "--soup-b", str(later), "--soup-weight", "0.25", "--out", str(soup_dir)])
    assert "tensors averaged" in capsys.readouterr().out
    mixed = load_file(str(soup_dir / "diffusion_pytorch_model.safetensors"))
    assert set(mixed) == set(b) and any(k.startswith("unet.velocity.") and k not in a for k in mixed)
    floats = 0
    for k, v in mixed.items():
        assert v.dtype == b[k].dtype and v.shape == b[k].shape
        if k in a and v.is_floating_point():
            torch.testing.assert_close(v.float(), 0.25 * a[k].float() + 0.75 * b[k].float(), atol=2e-3, rtol=2e-3)
            assert (v.float() - b[k].float()).abs().max() > 0.05  # a quarter of the way back to A
            floats += 1
        else:  # B's own tensors, and non-float ones (equal in both), as they are
            assert torch.equal(v, b[k])
    assert floats > 10 and any(not v.is_floating_point() for v in mixed.values())
    config = json.loads((soup_dir / "config.json").read_text())
    a_config, b_config = (json.loads((d / "config.json").read_text()) for d in (out, later))
    assert config["soup"] == {
        "weight_a": 0.25, "a_folder": str(out), "b_folder": str(later),
        **{f"{n}_{k}": c[k] for n, c in (("a", a_config), ("b", b_config))
           for k in ("trained_cpu_minutes", "trained_steps")},
        **{f"{n}_sha256": hashlib.sha256((d / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
           for n, d in (("a", out), ("b", later))},
        "note": "trained_cpu_minutes and trained_steps above this entry are B's"}
    assert config["velocity"] is True and b_config["trained_steps"] > a_config["trained_steps"]
    done = list(VideoPipeline(TinyV2Backend.from_pretrained(soup_dir)).generate(_request(num_steps=2)))[-1]
    assert isinstance(done, Done) and done.frames.shape[0] == _request().num_frames

    with pytest.raises(SystemExit, match="lacks .* not a later export of A"):  # the wrong way round
        train_v2_main(["--soup-a", str(later), "--soup-b", str(out), "--out", str(tmp_path / "x")])
    odd = tmp_path / "odd"  # a non-float tensor that differs cannot be averaged
    shutil.copytree(later, odd)
    flags = [k for k, v in b.items() if v.dtype == torch.bool]
    save_file({k: ~v if k in flags else v for k, v in b.items()}, str(odd / "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(SystemExit, match="differ in the non-float tensor"):
        train_v2_main(["--soup-a", str(out), "--soup-b", str(odd), "--out", str(tmp_path / "x")])
    x, pair = ["--out", str(tmp_path / "x")], ["--soup-a", str(out), "--soup-b", str(later)]
    for argv, message in (([*pair, "--soup-weight", "1.5", *x], "--soup-weight must be in [0, 1]"),
                          (["--soup-a", str(out), *x], "--soup-a and --soup-b go together"),
                          (["--soup-weight", "0.3", *x], "--soup-a and --soup-b go together"),  # not a training run
                          (pair, "a soup needs its own --out"),  # the default --out is the shipped model
                          ([*pair, "--out", str(later)], "a soup needs its own --out"),
                          ([*pair, "--save-compact", *x], "only write a soup")):
        with pytest.raises(SystemExit):
            train_v2_main(argv)
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_shape_breakdown_says_which_shape_fails_and_what_it_is_read_as():
    from vdemo import bakeoff

    cases = bakeoff.eval_cases(6, 4, 64)  # circle, square, triangle, circle, square, triangle
    by_id = {c.objects[0]["shape"]: c.frames for c in cases}
    generated = [c.frames if c.objects[0]["shape"] != "square" else by_id["circle"] for c in cases]  # squares round
    generated[2] = np.concatenate([cases[2].frames[:2], np.zeros_like(cases[2].frames[2:])])  # a triangle lost: frame 2
    text = bakeoff.shape_breakdown(generated, cases, "text")
    assert text["circle"] == {"right": 1.0, "cases": 2, "read_as": {}}
    assert text["square"] == {"right": 0.0, "cases": 2, "read_as": {"circle": 2}}
    assert text["triangle"] == {"right": 0.5, "cases": 2, "read_as": {"none": 1}}
    assert bakeoff.shape_breakdown(generated, cases, "kept") == text  # frame 0's detected shape is the caption's
    assert bakeoff.shape_kept_per_frame(generated, cases) == [round(4 / 6, 4)] * 2 + [0.5] * 2
    assert bakeoff.shape_from_text(generated, cases) == pytest.approx(3 / 6)  # the rows the breakdown splits
    blank = [cases[0].__class__(**{**vars(cases[0]), "frames": np.zeros_like(cases[0].frames)})]  # no object at all
    none = bakeoff.shape_breakdown([blank[0].frames], blank, "kept")["none"]  # asked for nothing, got nothing
    assert none == {"right": 1.0, "cases": 1, "read_as": {}}


def test_the_head_to_head_scores_exported_folders_on_the_same_held_out_cases(trained, tmp_path, capsys, monkeypatch):
    import shutil

    import vdemo.bakeoff as bakeoff

    out, _ = trained
    other = tmp_path / "other"
    shutil.copytree(out, other)
    weights = load_file(str(other / "diffusion_pytorch_model.safetensors"))
    weights = {k: v * 2 if k == "unet.conv_in.weight" else v for k, v in weights.items()}
    from safetensors.torch import save_file

    save_file(weights, str(other / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    seen = []

    def fake_evaluate(model, cases, tokenizer, cfg):  # records what each folder is scored on
        seen.append(([c.caption for c in cases], cfg.size, cfg.steps, model.training, next(model.parameters()).dtype))
        metrics = {"edge_sharpness": float(model.unet.conv_in.weight.abs().sum()) / 1e3, "shape_kept": 0.123456}
        return metrics, [c.frames for c in cases], [np.zeros_like(c.frames) for c in cases]  # text right, kept lost

    monkeypatch.setattr(bakeoff, "evaluate", fake_evaluate)
    scores = bakeoff.main(["--score", str(out), str(other), "--cases", "3", "--steps", "2", "--threads", "1"])
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[0] for line in printed] == [str(out), str(other)]
    assert [json.loads(line.split(" ", 1)[1]) for line in printed] == [scores[str(out)], scores[str(other)]]
    assert scores[str(out)]["shape_kept"] == 0.1235  # rounded to 4 places
    assert scores[str(other)]["edge_sharpness"] == pytest.approx(2 * scores[str(out)]["edge_sharpness"], rel=1e-3)
    assert len(seen) == 2 and seen[0] == seen[1]  # the same held-out cases, at the folder's own size, eval mode
    assert len(seen[0][0]) == 3 and seen[0][1:] == (64, 2, False, torch.float32)
    by_shape = scores[str(out)]["by_shape"]  # the held-out cases are one circle, one square, one triangle
    assert by_shape["shape_from_text"] == {s: {"right": 1.0, "cases": 1, "read_as": {}} for s in world.SHAPES}
    assert by_shape["shape_kept"] == {s: {"right": 0.0, "cases": 1, "read_as": {"none": 1}} for s in world.SHAPES}
    assert scores[str(out)]["shape_kept_per_frame"] == [0.0] * 8
    with pytest.raises(SystemExit):
        bakeoff.main(["--score", str(tmp_path / "nothing")])
    assert "no exported v2 model in" in capsys.readouterr().err
    for extra, message in ((["--report-only"], "cannot be combined"), (["--save-resume", str(tmp_path / "r")],
                                                                        "cannot be combined")):
        with pytest.raises(SystemExit):  # refused before anything is scored or written
            bakeoff.main(["--score", str(out), "--out", str(tmp_path / "o"), *extra])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bakeoff.main(["--save-resume", str(tmp_path / "r"), "--out", str(tmp_path / "o")])
    assert "add --report-only" in capsys.readouterr().err
    assert len(seen) == 2 and not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("env, flags, expected", [("1", [], True), ("0", [], False), ("0", ["--bf16"], True),
                                                   ("1", ["--no-bf16"], False)])
def test_the_tools_bf16_default_is_the_apps_choice_for_this_cpu(monkeypatch, env, flags, expected):
    """Left out, --bf16 follows VDEMO_CPU_BF16 / the CPU's flags as the app does (emulated bf16 is several times
    slower than float32); given, it wins."""
    from vdemo.train import TrainConfig
    from vdemo.train_v2 import parse_args

    monkeypatch.setenv("VDEMO_CPU_BF16", env)
    assert parse_args(flags).bf16 is expected
    assert TrainConfig.from_args(flags).bf16 is expected


def test_the_bakeoff_bf16_default_follows_the_cpu_and_a_bad_setting_is_one_line(monkeypatch, tmp_path, capsys):
    import vdemo.bakeoff as bakeoff

    used = []
    monkeypatch.setattr(bakeoff, "score_exports", lambda folders, cfg: used.append(cfg.bf16) or {})
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    for env, flags in (("0", []), ("1", []), ("0", ["--bf16"])):
        monkeypatch.setenv("VDEMO_CPU_BF16", env)
        bakeoff.main(["--score", str(tmp_path / "m"), *flags])
    assert used == [False, True, True]
    monkeypatch.setenv("VDEMO_CPU_BF16", "maybe")
    from vdemo.train_v2 import parse_args

    for call in (lambda: bakeoff.main(["--score", str(tmp_path / "m")]), lambda: parse_args([])):
        with pytest.raises(SystemExit):
            call()
        assert "VDEMO_CPU_BF16 must be 1, 0 or auto, got 'maybe'" in capsys.readouterr().err
    assert len(used) == 3
