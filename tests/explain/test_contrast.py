"""The explained score's class coefficients and how classes are named."""

from __future__ import annotations

import pytest
import torch

from traitlens.explain import ExplainError
from traitlens.explain.contrast import auto_references, class_coefficients, resolve_class


def test_coefficients_are_the_target_minus_gamma_times_the_mean_reference() -> None:
    targets_b = torch.tensor([0, 2])
    refs_bk = torch.tensor([[1, 3], [2, 1]])  # the second image's first reference is its target

    coef_bc = class_coefficients(targets_b, refs_bk, gamma=0.6, n_classes=4)

    expected = torch.tensor([[1.0, -0.3, 0.0, -0.3], [0.0, -0.6, 1.0, 0.0]])
    assert torch.allclose(coef_bc, expected)
    logits_bc = torch.tensor([[5.0, 4.0, 0.0, 2.0], [1.0, 3.0, 7.0, 0.0]])
    assert torch.allclose((coef_bc * logits_bc).sum(1), torch.tensor([5 - 0.6 * 3.0, 7 - 0.6 * 3.0]))


def test_gamma_zero_gives_exactly_one_hot_coefficients() -> None:
    coef_bc = class_coefficients(torch.tensor([1, 0]), torch.tensor([[0, 2], [1, 2]]), gamma=0.0, n_classes=3)

    assert torch.equal(coef_bc, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert not torch.signbit(coef_bc).any()


def test_auto_references_skip_the_target_and_refuse_more_than_the_other_classes() -> None:
    logits_bc = torch.tensor([[0.1, 0.9, 0.5], [3.0, 1.0, 2.0]])

    assert auto_references(logits_bc, torch.tensor([1, 2]), n_refs=1).tolist() == [[2], [0]]
    assert auto_references(logits_bc, torch.tensor([1, 2]), n_refs=2).tolist() == [[2, 0], [0, 1]]
    # the default takes up to DEFAULT_N_REFS (3) and fits a head with fewer other classes
    assert auto_references(logits_bc, torch.tensor([1, 2])).tolist() == [[2, 0], [0, 1]]
    with pytest.raises(ExplainError, match="3 reference classes asked for, but the head has only 2 classes"):
        auto_references(logits_bc, torch.tensor([1, 2]), n_refs=3)


@pytest.mark.parametrize(
    ("key", "names", "index"),
    [("tabby", ["cat", "tabby"], 1), ("3", None, 3), (3, ["a"], 3), ("1", ["0", "x", "1"], 2), (" 2 ", ["a", "b"], 2)],
)
def test_classes_by_name_or_index(key: str | int, names: list[str] | None, index: int) -> None:
    assert resolve_class(key, names) == index


def test_unknown_names_suggest_close_ones() -> None:
    with pytest.raises(ExplainError, match="unknown target 'tabby kat'.*did you mean 'tabby cat'"):
        resolve_class("tabby kat", ["tabby cat", "tiger cat", "lynx"], "target")
    with pytest.raises(ExplainError, match="the model has no class names; give an index"):
        resolve_class("lynx", None)
