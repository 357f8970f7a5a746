"""Pretrained-weight loading: HF transformers parity, original-ViT .npz layout, posemb resampling, bad files."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from translocator_jax import errors, models
from translocator_jax.models import load


def _hf_vit(seed=0):
  """A random tiny transformers ViTModel (every weight perturbed, LayerNorms included)."""
  cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               image_size=32, patch_size=8, num_channels=3)
  torch.manual_seed(seed)
  model = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.2 * torch.randn_like(p))
  return model


def _legacy_names(state):
  """transformers-5 names -> the names in the published google/vit-* files."""
  out = {}
  for k, v in state.items():
    k = k.replace("layers.", "encoder.layer.")
    for new, old in (("attention.q_proj", "attention.attention.query"), ("attention.k_proj", "attention.attention.key"),
                     ("attention.v_proj", "attention.attention.value"), ("attention.o_proj", "attention.output.dense"),
                     ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
      k = k.replace(new, old)
    out["vit." + k] = v
  return out


def _init(cfg, image_size=None):
  s = image_size or cfg.image_size
  x = jnp.zeros((1, s, s, 3), jnp.float32)
  seg = jnp.zeros((1, s, s), jnp.int32) if cfg.seg_input == "classes" else x
  return models.build_model(cfg).init(jax.random.key(0), x, seg)["params"]


@pytest.mark.parametrize("layout", ["safetensors_dir", "legacy_torch_bin"])
def test_hf_parity(tiny, tmp_path, layout):
  hf = _hf_vit()
  if layout == "safetensors_dir":
    hf.save_pretrained(tmp_path)  # model.safetensors + config.json
    path = tmp_path
  else:
    path = tmp_path / "pytorch_model.bin"
    torch.save(_legacy_names(hf.state_dict()), path)
  cfg = tiny("ln_epsilon=1e-12,gelu_approximate=False").model
  params = _init(cfg)
  loaded, report = load.load_pretrained(params, path, cfg)
  assert report.format == ("hf-safetensors" if layout == "safetensors_dir" else "hf-torch")
  assert report.notes == [] and report.resampled == [] and report.unused == []
  assert {k.split("/")[0] for k in report.loaded} == {"rgb", "seg"}
  assert {k.split("/")[0] for k in report.left} == {"fusion", "head_coarse", "head_middle", "head_fine",
                                                    "head_scene"}
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded["rgb"], loaded["seg"])

  image = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = hf(pixel_values=torch.from_numpy(image.transpose(0, 3, 1, 2).copy())).last_hidden_state.numpy()
  encoder = models.build_encoder(cfg)
  got = np.asarray(encoder.apply({"params": loaded["rgb"]}, jnp.asarray(image)))
  assert got.shape == want.shape == (2, 17, 32)
  assert np.abs(got - want).max() < 1e-4
  # The same weights with the wrong LayerNorm epsilon / GELU are flagged, and really compute something else.
  cfg_default = tiny().model
  loaded2, report2 = load.load_pretrained(params, path, cfg_default)
  assert len(report2.notes) == 2 and "ln_epsilon" in report2.notes[0] and "gelu" in report2.notes[1]
  other = np.asarray(models.build_encoder(cfg_default).apply({"params": loaded2["rgb"]}, jnp.asarray(image)))
  assert np.abs(other - want).max() > 1e-4  # outside the parity tolerance above


def _npz_from_encoder(cfg, path, seed=1, drop=(), extra=True):
  s = cfg.image_size
  enc = models.build_encoder(cfg)
  params = enc.init(jax.random.key(seed), jnp.zeros((1, s, s, 3)))["params"]
  flat = {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params, sep="/").items() if k not in drop}
  if extra:  # what ViT-B_16.npz (in21k) carries beside the encoder
    flat["head/kernel"] = np.ones((cfg.width, 10), np.float32)
    flat["head/bias"] = np.zeros((10,), np.float32)
    flat["pre_logits/kernel"] = np.ones((cfg.width, cfg.width), np.float32)
  np.savez(path, **flat)
  return flat


def test_npz_load_with_posemb_resampling(tiny, tmp_path):
  src_cfg = tiny().model                         # checkpoint made at 32 px: 4x4 grid
  flat = _npz_from_encoder(src_cfg, tmp_path / "vit.npz")
  cfg = tiny("image_size=48").model              # model at 48 px: 6x6 grid
  params = _init(cfg, 48)
  loaded, report = load.load_pretrained(params, tmp_path / "vit.npz", cfg)
  assert report.format == "npz" and report.notes == []
  assert report.unused == ["head/bias", "head/kernel", "pre_logits/kernel"]
  assert report.resampled == [f"{s}/Transformer/posembed_input/pos_embedding: (1, 17, 32) -> (1, 37, 32)"
                              for s in ("rgb", "seg")]
  got = flax.traverse_util.flatten_dict(loaded, sep="/")
  for stream in ("rgb", "seg"):
    for key, value in flat.items():
      if key.startswith(("head", "pre_logits")):
        continue
      ours = got[f"{stream}/{key}"]
      if key == load.POSEMB:
        assert ours.shape == (1, 37, 32)
        np.testing.assert_array_equal(ours[:, 0], value[:, 0])   # CLS position kept
      else:
        np.testing.assert_array_equal(ours, value)
  # Heads and fusion untouched.
  np.testing.assert_array_equal(loaded["fusion"]["f"]["Dense_0"]["kernel"], params["fusion"]["f"]["Dense_0"]["kernel"])
  assert set(report.left) == {k for k in got if not k.startswith(("rgb/", "seg/"))}
  print(report.summary())
  # Loaded params run.
  x = jnp.ones((1, 48, 48, 3))
  out = models.build_model(cfg).apply({"params": loaded}, x, x)
  assert out["fine"].shape == (1, 11)


def test_npz_into_class_index_seg_stream(tiny, tmp_path):
  cfg = tiny("seg_input=classes").model
  _npz_from_encoder(cfg, tmp_path / "vit.npz")
  params = _init(cfg)
  loaded, report = load.load_pretrained(params, tmp_path / "vit.npz", cfg)
  assert "seg/embedding/kernel" in report.left and "rgb/embedding/kernel" in report.loaded
  assert "seg/embedding/bias" in report.loaded and "seg_classes/embedding" in report.left
  assert any("seg_input='classes'" in n for n in report.notes)
  np.testing.assert_array_equal(loaded["seg"]["embedding"]["kernel"], params["seg"]["embedding"]["kernel"])


def test_resample_posemb():
  grid = np.arange(4, dtype=np.float32)
  ramp = (grid[:, None] * 10 + grid[None, :]).reshape(1, 16, 1)   # value = 10*row + col
  posemb = np.concatenate([np.full((1, 1, 1), -5.0, np.float32), ramp], axis=1)
  same = load.resample_posemb(posemb, 17)
  np.testing.assert_allclose(same, posemb, atol=1e-6)
  big = load.resample_posemb(posemb, 1 + 64)[0, 1:, 0].reshape(8, 8)
  assert load.resample_posemb(posemb, 65)[0, 0, 0] == -5.0
  # Bilinear zoom of a linear ramp: corners kept, rows and columns increasing.
  assert big[0, 0] == pytest.approx(0.0, abs=1e-5) and big[-1, -1] == pytest.approx(33.0, abs=1e-5)
  assert (np.diff(big, axis=0) > 0).all() and (np.diff(big, axis=1) > 0).all()
  with pytest.raises(errors.CheckpointError, match="square grid"):
    load.resample_posemb(posemb, 20)


class _NotAWeight:
  pass


def test_bad_checkpoints(tiny, tmp_path):
  cfg = tiny().model
  params = _init(cfg)
  (tmp_path / "text.npz").write_text("hello, not a checkpoint")
  with pytest.raises(errors.CheckpointError, match=r"text\.npz: not a readable \.npz"):
    load.load_pretrained(params, tmp_path / "text.npz", cfg)
  np.savez(tmp_path / "other.npz", weights=np.zeros(3))
  with pytest.raises(errors.CheckpointError, match="not a ViT checkpoint"):
    load.load_pretrained(params, tmp_path / "other.npz", cfg)
  (tmp_path / "noise.bin").write_bytes(np.random.default_rng(0).bytes(256))
  with pytest.raises(errors.CheckpointError, match="noise.bin: not a loadable pytorch state dict"):
    load.load_pretrained(params, tmp_path / "noise.bin", cfg)
  torch.save({"evil": _NotAWeight()}, tmp_path / "pickled.bin")   # arbitrary objects are refused, not run
  with pytest.raises(errors.CheckpointError, match="weights_only=True"):
    load.load_pretrained(params, tmp_path / "pickled.bin", cfg)
  (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
  with pytest.raises(errors.CheckpointError, match="not a readable safetensors"):
    load.load_pretrained(params, tmp_path / "bad.safetensors", cfg)
  (tmp_path / "weights.txt").write_text("x")
  with pytest.raises(errors.CheckpointError, match="unknown checkpoint type"):
    load.load_pretrained(params, tmp_path / "weights.txt", cfg)
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(errors.CheckpointError, match="model.safetensors"):
    load.load_pretrained(params, tmp_path / "empty_dir", cfg)
  with pytest.raises(FileNotFoundError):
    load.load_pretrained(params, tmp_path / "missing.npz", cfg)


def test_shape_mismatch_and_missing_key(tiny, tmp_path):
  cfg = tiny().model
  params = _init(cfg)
  _npz_from_encoder(tiny("width=48,num_heads=2").model, tmp_path / "wide.npz")
  with pytest.raises(errors.CheckpointError,
                     match=r"shape mismatch for '[^']+': checkpoint \([0-9, ]+\), model \([0-9, ]+\)"):
    load.load_pretrained(params, tmp_path / "wide.npz", cfg)
  missing = "Transformer/encoderblock_1/LayerNorm_2/scale"
  _npz_from_encoder(cfg, tmp_path / "holey.npz", drop=(missing,))
  with pytest.raises(errors.CheckpointError, match=f"no key '{missing}'"):
    load.load_pretrained(params, tmp_path / "holey.npz", cfg)
  # HF: the config.json head count must agree with the model.
  hf = _hf_vit()
  hf.config.num_attention_heads = 4
  hf.save_pretrained(tmp_path / "hf")
  with pytest.raises(errors.CheckpointError, match="num_attention_heads=4"):
    load.load_pretrained(params, tmp_path / "hf", cfg)
