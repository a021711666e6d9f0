"""PyTorch's own optimizer test inputs for SGD (torch.testing._internal.common_optimizers
optim_db) run through gradfast.optim.SGD: every configuration torch tests SGD with, stepped
side by side with torch.optim.SGD (for-loop), and every error input with torch's error type
and message."""
import re
import warnings

import pytest
import torch

pytest.importorskip("expecttest")  # torch's test infrastructure needs it
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db  # noqa: E402

from gradfast.optim import SGD  # noqa: E402

from clip_helpers import bits  # noqa: E402

SGD_INFO = next(info for info in optim_db if info.optim_cls is torch.optim.SGD)
INPUTS = SGD_INFO.optim_inputs_func(device="cpu")
ERRORS = SGD_INFO.optim_error_inputs_func(device="cpu", dtype=torch.float32)


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("inp", INPUTS, ids=[i.desc for i in INPUTS])
def test_optim_db_inputs_match_torch(inp, dtype):
    ours, ref = _model(0).to(dtype), _model(0).to(dtype)
    kw = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inp.kwargs.items()}
    kw_r = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inp.kwargs.items()}
    opt = SGD(ours.parameters(), **kw)
    opt_r = torch.optim.SGD(ref.parameters(), foreach=False, **kw_r)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.randn(4, 5, generator=gen, dtype=dtype)
        for m, o in ((ours, opt), (ref, opt_r)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    exact = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    for p, q in zip(ours.parameters(), ref.parameters()):
        if exact:
            assert torch.equal(bits(p.detach()), bits(q.detach()))
        else:
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert opt.state.get(p, {}).keys() == opt_r.state.get(q, {}).keys()


@pytest.mark.parametrize("err", ERRORS, ids=[e.optimizer_error_input.desc for e in ERRORS])
def test_optim_db_error_inputs_match_torch(err):
    inp = err.optimizer_error_input
    params = inp.params if inp.params is not None else \
        [torch.nn.Parameter(torch.randn(2, 2))]
    assert err.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR
    if issubclass(err.error_type, Warning):
        with pytest.warns(err.error_type, match=err.error_regex):
            SGD(params, **inp.kwargs)
        return
    with pytest.raises(err.error_type, match=err.error_regex) as ours:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            SGD(params, **inp.kwargs)
    with pytest.raises(err.error_type) as theirs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.optim.SGD(params, **inp.kwargs)
    assert str(ours.value) == str(theirs.value)
    assert re.search(err.error_regex, str(theirs.value))
