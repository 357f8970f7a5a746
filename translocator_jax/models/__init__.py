"""Models: the ViT encoder (checkpoint-compatible names), the dual-stream TransLocator, weight loading.

  model = build_model(config.model)
  variables = model.init(jax.random.key(0), image, seg)          # image [B,S,S,3]; seg per config.model.seg_input
  logits = model.apply(variables, image, seg, train=True, rngs={"dropout": key})   # {head name: [B, classes]}
  params, report = load_pretrained(variables["params"], "ViT-B_16.npz", config.model)
  scanned = scan_params(params)        # config.model.scan_layers' layout; unscan_params goes back
"""
from translocator_jax.models.layout import is_scanned
from translocator_jax.models.layout import scan_params
from translocator_jax.models.layout import unscan_params
from translocator_jax.models.load import LoadReport
from translocator_jax.models.load import load_pretrained
from translocator_jax.models.translocator import TransLocator
from translocator_jax.models.translocator import build_encoder
from translocator_jax.models.translocator import build_model
from translocator_jax.models.translocator import model_kwargs
from translocator_jax.models.vit import VARIANTS
from translocator_jax.models.vit import ViTEncoder
from translocator_jax.models.vit import decode_variant
