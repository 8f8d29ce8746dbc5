"""End to end on tiny settings: world -> training -> checkpoint -> loading -> generate (CLI) -> files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from vdemo.__main__ import main as cli
from vdemo.backends.tiny import TinyBackend
from vdemo.config import ATTENTION_MODES
from vdemo.pipeline import Done, GenerationRequest, VideoPipeline
from vdemo.samplers import default_scheduler_config
from vdemo.strokes import Stroke
from vdemo.train import TrainConfig, diffusion_loss, load_weights, new_model, sample_timesteps, train
from vdemo.train import main as train_main

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A from-scratch training run on tiny settings, then a resumed one: the folder the app would load."""
    tmp = tmp_path_factory.mktemp("train")
    cfg = TrainConfig(out=str(tmp / "model"), state=str(tmp / "state.pt"), log=str(tmp / "log.csv"), tiny=True,
                      max_steps=3, batch_size=2, minutes=5, bf16=False)
    first = train(cfg)
    assert first["total_steps"] == 3
    second = train(TrainConfig(**{**cfg.__dict__, "max_steps": 5}))
    assert second["steps"] == 2 and second["total_steps"] == 5, "training must resume where it stopped"
    rows = (tmp / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 6
    assert all(np.isfinite(float(r.split(",")[1])) for r in rows[1:])
    return tmp / "model"


def test_an_older_state_resumes_as_an_x0_model_with_position_embeddings(tmp_path):
    """v-prediction without position embeddings -> x0 with them: head negated, new layers at zero, rest kept."""
    cfg = TrainConfig(out=str(tmp_path / "model"), state=str(tmp_path / "state.pt"), log=str(tmp_path / "log.csv"),
                      tiny=True, max_steps=1, batch_size=2, minutes=5, bf16=False, prediction="v_prediction",
                      position_embedding=False)
    train(cfg)
    before = torch.load(tmp_path / "state.pt", weights_only=False)
    assert before["config"]["prediction_type"] == "v_prediction" and not before["config"]["position_embedding"]
    train(TrainConfig(**{**cfg.__dict__, "prediction": "sample", "position_embedding": True}))  # converts, saves
    after = torch.load(tmp_path / "state.pt", weights_only=False)
    assert after["config"]["prediction_type"] == "sample" and after["config"]["position_embedding"]
    assert after["step"] == 1
    for key in ("conv_out.weight", "conv_out.bias"):
        torch.testing.assert_close(after["model"][key], -before["model"][key])
    torch.testing.assert_close(after["model"]["conv_in.weight"], before["model"]["conv_in.weight"])
    new_keys = set(after["model"]) - set(before["model"])
    assert new_keys and all(k.startswith("pos_proj.") and not after["model"][k].any() for k in new_keys)
    backend = TinyBackend.from_pretrained(tmp_path / "model")
    assert backend.output_type == "sample" and backend.scheduler_config["prediction_type"] == "v_prediction"
    assert backend.model.config.position_embedding


def test_new_layers_of_a_resumed_run_start_the_same_in_the_model_and_its_ema(tmp_path):
    """The EMA of a layer the checkpoint lacked starts from the model's own init (an MLP's random first layer too)."""
    cfg = TrainConfig(out=str(tmp_path / "model"), state=str(tmp_path / "state.pt"), log=str(tmp_path / "log.csv"),
                      tiny=True, max_steps=1, batch_size=2, minutes=5, bf16=False, frame_conditioning=False)
    train(cfg)
    train(TrainConfig(**{**cfg.__dict__, "frame_conditioning": True}))  # at max_steps already: loads, saves, exports
    state = torch.load(tmp_path / "state.pt", weights_only=False)["model"]
    shipped = load_file(tmp_path / "model" / "diffusion_pytorch_model.safetensors")
    assert {k for k in state if k.startswith("frame_cond.")} == {k for k in shipped if k.startswith("frame_cond.")}
    torch.testing.assert_close(shipped["frame_cond.0.weight"], state["frame_cond.0.weight"])
    assert shipped["frame_cond.0.weight"].abs().max() > 0 and not shipped["frame_cond.2.weight"].any()


def test_mode_weights_decide_which_attention_modes_train(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "model"), state=str(tmp_path / "state.pt"), log=str(tmp_path / "log.csv"),
                      tiny=True, max_steps=4, batch_size=1, minutes=5, bf16=False,
                      mode_weights=(1e-9, 1e-9, 1e-9, 1.0, 1e-9))
    train(cfg)
    rows = (tmp_path / "log.csv").read_text().strip().splitlines()[1:]
    assert [row.split(",")[4] for row in rows] == ["causal"] * 4
    with pytest.raises(ValueError, match="mode_weights"):
        train(TrainConfig(**{**cfg.__dict__, "mode_weights": (1.0, 0.0, 1.0, 1.0, 1.0)}))
    with pytest.raises(SystemExit, match="^python -m vdemo.train: error: mode_weights needs 5 positive"):
        train_main(["--mode-weights", "1", "1", "1", "1", "-1"])


def test_load_weights_refuses_a_checkpoint_of_another_model():
    model = new_model(TrainConfig(tiny=True), vocab_size=128)
    state = model.state_dict()
    with pytest.raises(RuntimeError, match="does not match"):
        load_weights(model, {**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="conv_in.weight"):
        load_weights(model, {k: v for k, v in state.items() if k != "conv_in.weight"})
    missing = load_weights(model, {k: v for k, v in state.items() if not k.startswith(("pos_proj.", "pos_bias."))})
    assert {k.split(".")[0] for k in missing} == {"pos_proj", "pos_bias"}


def test_high_noise_share_of_training_timesteps():
    uniform = sample_timesteps(20_000, 1000, torch.Generator().manual_seed(0))
    assert torch.equal(uniform, torch.randint(0, 1000, (20_000,), generator=torch.Generator().manual_seed(0)))
    assert float((uniform >= 850).float().mean()) == pytest.approx(0.15, abs=0.01)
    mixed = sample_timesteps(20_000, 1000, torch.Generator().manual_seed(0), high_noise_frac=0.5, high_noise_from=850)
    assert float((mixed >= 850).float().mean()) == pytest.approx(0.5 + 0.5 * 0.15, abs=0.015)
    assert int(mixed.min()) == 0 and int(mixed.max()) == 999
    only_high = sample_timesteps(1000, 1000, torch.Generator().manual_seed(0), high_noise_frac=1.0, high_noise_from=900)
    assert int(only_high.min()) >= 900
    with pytest.raises(SystemExit, match="^python -m vdemo.train: error: high_noise_frac must be in"):
        train_main(["--high-noise-frac", "1.5"])


class _Oracle(torch.nn.Module):
    """Stands in for the model in `diffusion_loss`: returns the clean clip plus a fixed error."""

    def __init__(self, x0: torch.Tensor, error: float):
        super().__init__()
        self.config = type("Config", (), {"prediction_type": "sample"})()
        self.x0, self.error = x0, error

    def encode_text(self, ids):
        return None, None

    def forward(self, xt, t, *_):
        return self.x0 + self.error


@pytest.mark.parametrize("snr_cap", [1.0, 5.0])
def test_x0_loss_is_weighted_by_capped_snr_plus_one(snr_cap):
    scheduler = DDPMScheduler.from_config(default_scheduler_config())
    x0 = torch.rand(4, 2, 3, 8, 8) * 2 - 1
    batch = {"x0": x0, "ids": None, "controls": None, "flags": None, "fg": torch.zeros(4, 2, 1, 8, 8)}
    assert diffusion_loss(_Oracle(x0, 0.0), scheduler, batch, 4.0, torch.Generator().manual_seed(0)) == 0
    loss = diffusion_loss(_Oracle(x0, 0.1), scheduler, batch, 4.0, torch.Generator().manual_seed(0), snr_cap)
    generator = torch.Generator().manual_seed(0)
    torch.randn(x0.shape, generator=generator)  # the same draws as diffusion_loss: noise, then t
    t = torch.randint(0, 1000, (4,), generator=generator)
    expected = (1 / (1 - scheduler.alphas_cumprod[t])).clamp(max=snr_cap).mean() * 0.01
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)
    assert snr_cap > 1 or float(loss) == pytest.approx(0.01, rel=1e-4)


def test_checkpoint_layout_and_loading(trained):
    assert (trained / "config.json").exists()
    assert (trained / "diffusion_pytorch_model.safetensors").exists()
    assert (trained / "tokenizer" / "tokenizer.json").exists()
    backend = TinyBackend.from_pretrained(trained)
    assert next(backend.model.parameters()).dtype == torch.float32


def test_every_modality_mode_and_sampler_generates(trained):
    pipe = VideoPipeline(TinyBackend.from_pretrained(trained))
    rng = np.random.default_rng(0)
    base = dict(prompt="a red circle moves right on a black background", num_frames=4, height=64, width=64,
                num_steps=2, seed=3)
    extras = [{}, {"image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)},
              {"pose": rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)},
              {"depth": rng.integers(0, 255, (4, 64, 64), dtype=np.uint8)},
              {"strokes": (Stroke(((0.1, 0.5), (0.9, 0.5)), 0.1),)}]
    for extra in extras:
        for mode in ATTENTION_MODES:
            done = list(pipe.generate(GenerationRequest(**base, **extra, attention_mode=mode)))[-1]
            assert isinstance(done, Done) and done.frames.shape == (4, 64, 64, 3)
    for sampler in pipe.backend.samplers:
        done = list(pipe.generate(GenerationRequest(**base, sampler=sampler)))[-1]
        assert done.frames.shape == (4, 64, 64, 3)


def test_cli_generate_writes_video_frames_and_manifest(trained, tmp_path):
    strokes = tmp_path / "s.json"
    strokes.write_text(json.dumps([{"points": [[0.2, 0.5], [0.8, 0.5]], "radius": 0.1}]))
    out = tmp_path / "out" / "clip.mp4"
    code = cli(["generate", "--backend", "tiny", "--model-dir", str(trained), "--prompt", "a blue square moves up",
                "--strokes", str(strokes), "--frames", "4", "--steps", "2", "--mode", "causal", "--sampler", "Euler",
                "--out", str(out), "--frames-dir", str(tmp_path / "frames")])
    assert code == 0
    assert imageio_ffmpeg.count_frames_and_secs(str(out))[0] == 4
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["0000.png", "0001.png", "0002.png", "0003.png"]
    manifest = json.loads((out.parent / "manifest.json").read_text())
    assert manifest["request"]["attention_mode"] == "causal" and manifest["request"]["sampler"] == "Euler"
    assert manifest["request"]["modalities"] == ["strokes", "text"]


def test_planner_training_cli_and_planned_text_only_generation(trained, tmp_path, small_planner_dir, capsys):
    import shutil

    from vdemo.models.planner import PLANNER_DIR

    model = tmp_path / "model"
    shutil.copytree(trained, model)
    train_main(["--planner", "--planner-steps", "20", "--threads", "1", "--out", str(model)])
    assert (model / PLANNER_DIR / "config.json").exists()
    assert TinyBackend.from_pretrained(model).planner is not None
    with pytest.raises(SystemExit, match="planner_steps must be at least 1"):
        train_main(["--planner", "--planner-steps", "0", "--out", str(model)])
    shutil.rmtree(model / PLANNER_DIR)
    shutil.copytree(small_planner_dir, model / PLANNER_DIR)  # 600 steps: plans "down" reliably
    base = ["generate", "--backend", "tiny", "--model-dir", str(model), "--prompt", "a red circle moves down",
            "--frames", "4", "--steps", "1"]
    capsys.readouterr()
    assert cli(base + ["--out", str(tmp_path / "a" / "a.mp4")]) == 0
    assert "motion planned from the prompt: down" in capsys.readouterr().out
    plan = json.loads((tmp_path / "a" / "manifest.json").read_text())["motion_plan"]
    assert plan["directions"] == ["down"] and plan["strokes"][0]["points"][-1][1] > plan["strokes"][0]["points"][0][1]
    assert cli(base + ["--no-plan", "--out", str(tmp_path / "b" / "b.mp4")]) == 0
    assert "motion planned" not in capsys.readouterr().out
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["motion_plan"] is None and manifest["request"]["plan_motion"] is False


def _cli_error(args: list[str], capsys) -> str:
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_cli_bad_inputs_one_line_errors(trained, tmp_path, capsys):
    base = ["generate", "--backend", "tiny", "--model-dir", str(trained), "--frames", "4", "--steps", "1", "--out",
            str(tmp_path / "o.mp4")]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    assert "not valid JSON" in _cli_error(base + ["--strokes", str(bad_json)], capsys)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps([{"points": [[1.5, 0.2]], "radius": 0.1}]))
    assert "[0, 1]" in _cli_error(base + ["--strokes", str(outside)], capsys)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    assert "no image files" in _cli_error(base + ["--pose", str(empty_dir)], capsys)
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image")
    assert "not a readable image" in _cli_error(base + ["--image", str(fake)], capsys)
    pose_dir, depth_dir = tmp_path / "pose", tmp_path / "depth"
    for folder, n in ((pose_dir, 3), (depth_dir, 5)):
        folder.mkdir()
        for i in range(n):
            iio.imwrite(folder / f"{i:04d}.png", np.zeros((16, 16, 3), np.uint8))
    assert "same length" in _cli_error(base + ["--pose", str(pose_dir), "--depth", str(depth_dir)], capsys)
    assert "num_frames must be 4–32" in _cli_error(base[:5] + ["--frames", "500"], capsys)  # --backend tiny --model-dir


def test_cli_runs_as_module(trained, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vdemo", "generate", "--backend", "tiny", "--model-dir", str(trained),
                           "--frames", "4", "--steps", "1", "--mode", "nope", "--out", str(tmp_path / "x.mp4")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "unknown attention mode 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_shares_of_known_frames_and_strokes():
    from vdemo import world
    from vdemo.train import example_from_clip

    rng = np.random.default_rng(0)
    clips = [world.sample_clip(rng, num_frames=8, size=32, kind="objects") for _ in range(60)]
    for p_known, p_strokes in ((0.0, 0.0), (0.3, 0.3), (1.0, 1.0)):
        cfg = TrainConfig(p_known=p_known, p_strokes=p_strokes, p_drop_all=0.0)
        ex_rng = np.random.default_rng(1)
        flags = np.stack([example_from_clip(c, ex_rng, cfg)["flags"] for c in clips for _ in range(5)])  # (300, 5)
        known, strokes = flags[:, 1].mean(), flags[:, 4].mean()
        assert known == pytest.approx(p_known, abs=0.08) and strokes == pytest.approx(p_strokes, abs=0.08)
    with pytest.raises(SystemExit, match="p_known must be in"):
        train_main(["--p-known", "1.5"])


def test_depth_maps_are_given_at_their_own_share_for_depth_scenes_and_for_the_rest():
    from vdemo import world
    from vdemo.train import example_from_clip

    rng = np.random.default_rng(0)
    clips = {kind: [world.sample_clip(rng, num_frames=4, size=32, kind=kind) for _ in range(40)]
             for kind in ("objects", "depth")}
    cfg = TrainConfig(p_depth=0.9, p_depth_other=0.1, p_drop_all=0.0)
    ex_rng = np.random.default_rng(1)
    share = {kind: np.mean([example_from_clip(c, ex_rng, cfg)["flags"][3] for c in cs for _ in range(5)])
             for kind, cs in clips.items()}  # flags[3]: depth given
    assert share["depth"] == pytest.approx(0.9, abs=0.07) and share["objects"] == pytest.approx(0.1, abs=0.07)
    with pytest.raises(SystemExit, match="p_depth_other must be in"):
        train_main(["--p-depth-other", "-0.1"])


def test_cli_user_error_is_one_line_with_status_2(tmp_path, capsys):
    """A UserError (here parse_strokes' plain ValueError, converted at the CLI boundary) is `error: <one line>`."""
    strokes = tmp_path / "s.json"
    strokes.write_text(json.dumps([{"points": [[0.2, 0.5]], "radius": 5}]))
    err = _cli_error(["generate", "--strokes", str(strokes), "--out", str(tmp_path / "o.mp4")], capsys)
    assert err.startswith("error: s.json: ") and "radius must be" in err and "Traceback" not in err
    assert "--out must name a plain file" in _cli_error(["generate", "--out", str(tmp_path / "my clip.mp4")], capsys)


def test_cli_internal_error_shows_the_traceback_and_status_1(tmp_path, capsys, monkeypatch):
    import vdemo.__main__ as main_module

    def broken(args):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(main_module, "request_from_args", broken)
    assert cli(["generate", "--out", str(tmp_path / "o.mp4")]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert err.splitlines()[-1] == "internal error (a bug): RuntimeError: something broke"
