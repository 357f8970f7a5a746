"""The hand-written matmul backward equals autodiff of jnp.dot on every platform's path; weight gradients are
float32 whatever the matmul dtype (so cross-device gradient sums run in float32)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from translocator_jax.models import vit


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
@pytest.mark.parametrize("shape_in,features", [((3, 7, 5), 11), ((4, 13), 3)])  # x smaller / dy smaller
def test_values_and_gradients_match_autodiff(shape_in, features, platform):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape_in), jnp.float32)
  w = jnp.asarray(rng.standard_normal((shape_in[-1], features)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal(shape_in[:-1] + (features,)), jnp.float32)
  ours, vjp_ours = jax.vjp(lambda a, b: vit._dot(a, b, jnp.float32, platform), x, w)  # pylint: disable=protected-access
  ref, vjp_ref = jax.vjp(jnp.dot, x, w)
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
  for got, want in zip(jax.jit(vjp_ours)(dy), vjp_ref(dy)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_bfloat16_matmul_gives_float32_weight_gradients(platform):
  x = jnp.full((2, 5, 4), 1.0 + 2.0 ** -7, jnp.bfloat16)  # products round in bfloat16, not in float32 sums
  w = jnp.ones((4, 6), jnp.float32)
  y, vjp = jax.vjp(lambda a, b: vit._dot(a, b, jnp.bfloat16, platform), x, w)  # pylint: disable=protected-access
  assert y.dtype == jnp.bfloat16
  dx, dw = vjp(jnp.ones((2, 5, 6), jnp.bfloat16))
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(dw), np.full((4, 6), 10 * (1.0 + 2.0 ** -7), np.float32))
