"""``loraship::row_linear`` (handler/kernels/row_linear.cpp): ATen's product for every shape it takes, in eager
mode and from an inductor graph, and ATen's own product for what it does not take (more rows, other dtypes,
strided weights). Built at the first test, as the decode step builds it (a C++ compiler is required, as
inductor's CPU backend requires one)."""

import logging

import pytest
import torch
import torch.nn.functional as F

from loraship.handler import row_kernel


@pytest.fixture(scope="module", autouse=True)
def built():
    assert row_kernel.load(), "the row kernel did not build (see the warning logged)"


def row_linear(x, w, b=None):
    return torch.ops.loraship.row_linear(x, w, b)


@pytest.mark.parametrize("out_features", [1, 3, 4, 7, 192, 1029])
@pytest.mark.parametrize("in_features", [1, 15, 16, 17, 576, 1539])
def test_one_row_equals_aten(out_features, in_features):
    g = torch.Generator().manual_seed(out_features * 10_000 + in_features)
    w = torch.randn(out_features, in_features, generator=g)
    b = torch.randn(out_features, generator=g)
    x = torch.randn(1, 1, in_features, generator=g)
    for bias in (None, b):
        got = row_linear(x, w, bias)
        assert got.shape == (1, 1, out_features)
        torch.testing.assert_close(got, F.linear(x, w, bias), rtol=1e-5, atol=1e-5 * in_features**0.5)


def test_what_it_does_not_take_goes_to_aten():
    w = torch.randn(24, 40)
    cases = {
        "more rows": (torch.randn(3, 40), w),
        "float64": (torch.randn(1, 40, dtype=torch.float64), w.double()),
        "bfloat16": (torch.randn(1, 40, dtype=torch.bfloat16), w.bfloat16()),
        "a strided weight": (torch.randn(1, 40), torch.randn(40, 24).t()),
    }
    for name, (x, weight) in cases.items():
        got = row_linear(x, weight)
        assert got.dtype == x.dtype, name
        torch.testing.assert_close(got, F.linear(x, weight), msg=name)


def test_inductor_calls_it_from_a_compiled_graph():
    w, b = torch.randn(100, 64), torch.randn(100)

    def f(x):
        return torch.relu(row_linear(x * 2, w, b)) + 1

    x = torch.randn(1, 64)
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x), torch.relu(F.linear(x * 2, w, b)) + 1)


def test_a_kernel_that_does_not_build_is_reported_and_refused(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    broken = tmp_path / "broken_kernel.cpp"
    broken.write_text("this is not C++\n")
    with caplog.at_level(logging.WARNING, logger=row_kernel.log.name):
        assert row_kernel.build(broken) is False
    assert "could not build the one-row product kernel" in caplog.text
