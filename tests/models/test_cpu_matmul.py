"""The hand-written dense backward equals autodiff of x @ w + b on every platform's path; weight and bias
gradients are float32 whatever the matmul dtype (so cross-device gradient sums run in float32)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from translocator_jax.models import layers as vit_layers


def _dense(dtype, platform):
  return lambda x, w, b: vit_layers.affine(x, w, b, dtype, platform)  # pylint: disable=protected-access


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
@pytest.mark.parametrize("shape_in,features", [((3, 7, 5), 11), ((4, 13), 3)])  # x smaller / dy smaller
def test_values_and_gradients_match_autodiff(shape_in, features, platform):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape_in), jnp.float32)
  w = jnp.asarray(rng.standard_normal((shape_in[-1], features)), jnp.float32)
  b = jnp.asarray(rng.standard_normal((features,)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal(shape_in[:-1] + (features,)), jnp.float32)
  ours, vjp_ours = jax.vjp(_dense(jnp.float32, platform), x, w, b)
  ref, vjp_ref = jax.vjp(lambda x, w, b: jnp.dot(x, w) + b, x, w, b)
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
  for got, want in zip(jax.jit(vjp_ours)(dy), vjp_ref(dy)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_bfloat16_matmul_gives_float32_weight_and_bias_gradients(platform):
  x = jnp.full((2, 5, 4), 1.0 + 2.0 ** -7, jnp.bfloat16)
  w, b = jnp.ones((4, 6), jnp.float32), jnp.zeros((6,), jnp.float32)
  y, vjp = jax.vjp(_dense(jnp.bfloat16, platform), x, w, b)
  assert y.dtype == jnp.bfloat16
  # 10 rows of 1 + 2^-7 (exact in bfloat16): a bfloat16 sum would round 10.078125 to 10.0625.
  dx, dw, db = vjp(jnp.full((2, 5, 6), 1.0 + 2.0 ** -7, jnp.bfloat16))
  assert dx.dtype == jnp.bfloat16 and dw.dtype == db.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(dw), np.full((4, 6), 10 * (1.0 + 2.0 ** -7) ** 2, np.float32))
  np.testing.assert_array_equal(np.asarray(db), np.full((6,), 10 * (1.0 + 2.0 ** -7), np.float32))
