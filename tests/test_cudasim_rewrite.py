"""cudasim's source rewrite (tools/cudasim/rewrite_launches.py): the only change made to
csrc/cuda before the host compiler sees it, so it must keep every launch's kernel, its
configuration and its arguments exactly."""
import pytest

from sim_device import load_tool

rewrite = load_tool("rewrite_launches").rewrite


@pytest.mark.parametrize("src,expected", [
    ("kernel<<<grid, kBlock, 0, stream>>>(a);",
     "::gfsim::launch(kernel, ::gfsim::config(grid, kBlock, 0, stream), a);"),
    ("  norm_kernel<K, T><<<g, 256>>>(x, y);",
     "  ::gfsim::launch(norm_kernel<K, T>, ::gfsim::config(g, 256), x, y);"),
    ("f(dt, adam_kernel<scalar_t><<<(unsigned int)n, 256, 0, st>>>(\n    m, n));",
     "f(dt, ::gfsim::launch(adam_kernel<scalar_t>, ::gfsim::config((unsigned int)n, 256, 0, "
     "st), \n    m, n));"),
    ("ns::k<A<B>, C><<<1, 32>>>( );", "::gfsim::launch(ns::k<A<B>, C>, ::gfsim::config(1, 32) );"),
    ("x = a < b; y = c > d;", "x = a < b; y = c > d;"),
    ("cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(g), b, p, 0, s);",
     "cudaLaunchCooperativeKernel(kernel, dim3(g), b, p, 0, s);"),
])
def test_rewrite(src, expected):
    assert rewrite(src) == expected


def test_launch_without_a_kernel_name_is_refused():
    with pytest.raises(SystemExit):
        rewrite("(<<<1, 32>>>());")
