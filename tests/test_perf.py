"""perf.keep_freed_host_memory: a freed large buffer stays with the process and the next one reuses it (XLA:CPU
allocates every train step's activations afresh; handing them back to the kernel made each step fault them in)."""
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import sys
    from translocator_jax.runtime import perf
    kept = perf.keep_freed_host_memory() if sys.argv[1] == "keep" else False
    import numpy as np
    def rss_mb():
      with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
    base = rss_mb()
    a = np.ones(64 * 2 ** 20, np.float32)  # 256 MB, every page touched
    del a
    after_free = rss_mb() - base
    b = np.ones(64 * 2 ** 20, np.float32)
    after_second = rss_mb() - base
    print(kept, round(after_free), round(after_second))
""")


def _probe(mode):
  out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                       env={"PATH": "/usr/bin:/bin", "TRANSLOCATOR_KEEP_HOST_MEMORY": "1"}, timeout=120).stdout
  kept, after_free, after_second = out.split()
  return kept == "True", int(after_free), int(after_second)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_a_freed_large_buffer_is_kept_and_reused():
  kept, after_free, after_second = _probe("keep")
  assert kept
  assert after_free > 200      # MB still held after `del`: kept for the next allocation
  assert after_second < 300    # ... which reuses it rather than growing by another 256 MB
  _, default_free, _ = _probe("default")
  assert default_free < 50     # glibc's default hands a 256 MB buffer straight back to the kernel
