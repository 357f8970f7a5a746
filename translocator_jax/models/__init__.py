"""Models: the ViT encoder (checkpoint-compatible names), the dual-stream TransLocator, weight loading."""
from translocator_jax.models.translocator import build_encoder
from translocator_jax.models.translocator import build_model
from translocator_jax.models.translocator import model_kwargs
from translocator_jax.models.translocator import TransLocator
from translocator_jax.models.vit import decode_variant
from translocator_jax.models.vit import VARIANTS
from translocator_jax.models.vit import ViTEncoder
