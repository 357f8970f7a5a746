"""The CPU matmul with a hand-written weight gradient equals autodiff of jnp.dot, both transpose choices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from translocator_jax.models import vit


@pytest.mark.parametrize("shape_in,features", [((3, 7, 5), 11), ((4, 13), 3)])  # x smaller / dy smaller
def test_values_and_gradients_match_autodiff(shape_in, features):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape_in), jnp.float32)
  w = jnp.asarray(rng.standard_normal((shape_in[-1], features)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal(shape_in[:-1] + (features,)), jnp.float32)
  ours, vjp_ours = jax.vjp(vit._cpu_matmul, x, w)  # pylint: disable=protected-access
  ref, vjp_ref = jax.vjp(jnp.dot, x, w)
  np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
  for got, want in zip(jax.jit(vjp_ours)(dy), vjp_ref(dy)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_gradients_keep_their_dtypes():
  x = jnp.ones((2, 5, 4), jnp.bfloat16)
  w = jnp.ones((4, 6), jnp.bfloat16)
  _, vjp = jax.vjp(vit._cpu_matmul, x, w)  # pylint: disable=protected-access
  dx, dw = vjp(jnp.ones((2, 5, 6), jnp.bfloat16))
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(dw, np.float32), np.full((4, 6), 10.0))
