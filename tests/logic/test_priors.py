"""Typed priors: each kind compiles to the formula its docstring states, and the mapping of a
priors file means the same list of priors."""

from __future__ import annotations

import pytest
import torch

from wsseg_fast.logic import (
    BoxSize,
    Contains,
    Excludes,
    OneClassPerPixel,
    Pairwise,
    compile_knowledge_base,
    forall,
    implies_reichenbach,
)
from wsseg_fast.logic.priors import PriorsError, as_priors, load_priors

NAMES = ["background", "disc", "cup"]
ANNS = [{"bbox": [2, 2, 8, 8], "category_id": 1}, {"bbox": [4, 4, 3, 3], "category_id": 2}]


def test_the_mapping_and_the_typed_priors_compile_the_same_knowledge_base():
    mapping = {
        "contains": [["cup", "disc"]],
        "excludes": [["background", "cup"]],
        "box_size": [0.2, 0.9],
        "pairwise": {"threshold": 0.5},
    }
    typed = [Pairwise({"threshold": 0.5}), Excludes("background", "cup"), BoxSize(0.2, 0.9), Contains("cup", "disc")]
    assert as_priors(mapping) == [
        Contains("cup", "disc"),
        Excludes("background", "cup"),
        BoxSize(0.2, 0.9),
        Pairwise({"threshold": 0.5}),
    ]
    images = torch.rand(1, 3, 12, 12)
    a = compile_knowledge_base(ANNS, 3, (12, 12), class_names=NAMES, priors=mapping, images=images)
    b = compile_knowledge_base(ANNS, 3, (12, 12), class_names=NAMES, priors=typed, images=images)
    assert (
        a.names()
        == b.names()
        == ["boxes", "box_size", "tags_present", "contains[cup->disc]", "excludes[background,cup]", "pairwise"]
    )
    probs = torch.rand(1, 3, 12, 12, dtype=torch.float64)
    assert a(probs)[0] == b(probs)[0]


def test_contains_is_reichenbach_under_forall_and_classes_go_by_channel_too():
    kb = compile_knowledge_base({"annotations": []}, 3, (4, 4), priors=[Contains(2, 1)])
    probs = torch.rand(1, 3, 4, 4, dtype=torch.float64)
    assert kb.names() == ["contains[2->1]"]
    torch.testing.assert_close(
        kb.truths(probs)["contains[2->1]"], forall(implies_reichenbach(probs[:, 2], probs[:, 1]))
    )


def test_pairwise_is_on_with_images_unless_turned_off():
    images = torch.rand(1, 3, 8, 8)
    assert "pairwise" in compile_knowledge_base(ANNS, 3, (8, 8), images=images).names()
    assert (
        "pairwise"
        not in compile_knowledge_base(ANNS, 3, (8, 8), images=images, priors=[Pairwise(enabled=False)]).names()
    )
    assert "pairwise" not in compile_knowledge_base(ANNS, 3, (8, 8), images=images, priors={"pairwise": False}).names()
    assert "one_class_per_pixel" in compile_knowledge_base(ANNS, 3, (8, 8), priors=[OneClassPerPixel()]).names()


def test_bad_priors_name_what_is_wrong():
    with pytest.raises(PriorsError, match="box_size"):
        BoxSize(0.9, 0.2)
    with pytest.raises(PriorsError, match="unknown prior kinds"):
        as_priors({"containz": []})
    with pytest.raises(PriorsError, match="pairs"):
        as_priors({"excludes": ["cup", "disc"]})
    with pytest.raises(PriorsError, match="unknown class name 'lid'"):
        compile_knowledge_base(ANNS, 3, (8, 8), class_names=NAMES, priors=[Contains("lid", "disc")])


CONTRADICTIONS = [
    (
        {"contains": [["cup", "disc"]], "excludes": [["disc", "cup"]]},
        r"^contains\[cup->disc\] and excludes\[disc,cup\] contradict each other: a cup pixel would be both disc "
        r"and cup, so cup could only be empty$",
    ),
    (
        {"contains": [["cup", "disc"], ["disc", "rim"]], "excludes": [["cup", "rim"]]},  # through a chain
        r"^contains\[cup->disc\], contains\[disc->rim\] and excludes\[cup,rim\] contradict each other",
    ),
    (
        {"contains": [["cup", "disc"]], "one_class_per_pixel": True},
        r"^contains\[cup->disc\] and one_class_per_pixel contradict each other: a cup pixel would be cup and disc "
        r"at once; with one class per pixel, drop contains \(cup is a class of its own, disc keeps the pixels",
    ),
    (
        {"contains": [["cup", "disc"], ["disc", "rim"], ["rim", "cup"]]},
        r"^contains\[cup->disc\], contains\[disc->rim\] and contains\[rim->cup\] form a cycle",
    ),
    (
        {"contains": [["cup", "disc"], ["disc", "cup"]]},
        r"^contains\[cup->disc\] and contains\[disc->cup\] form a cycle",
    ),
    ({"excludes": [["rim", "rim"]]}, r"^excludes\[rim,rim\] says a class is never itself: rim could only be empty$"),
    ({"contains": [["cup", "lid"]]}, r"^contains\[cup->lid\]: unknown class name 'lid'"),
    ([Excludes(2, 7)], r"^excludes\[2,7\]: class 7 in priors is not a channel in \[0, 4\)$"),
]
CLASSES = ["background", "disc", "cup", "rim"]


@pytest.mark.parametrize("priors, message", CONTRADICTIONS)
def test_contradictory_priors_are_refused_naming_the_clauses(priors, message):
    with pytest.raises(PriorsError, match=message):
        compile_knowledge_base({"annotations": []}, 4, (4, 4), class_names=CLASSES, priors=priors)


def test_priors_that_agree_compile():
    """Self-containment is harmless, and classes nested in a chain may exclude classes off the chain."""
    rules = {"contains": [["cup", "disc"], ["disc", "rim"], ["cup", "cup"]], "excludes": [["background", "cup"]]}
    kb = compile_knowledge_base({"annotations": []}, 4, (4, 4), class_names=CLASSES, priors=rules)
    assert kb.names() == [
        "contains[cup->disc]",
        "contains[disc->rim]",
        "contains[cup->cup]",
        "excludes[background,cup]",
    ]
    one_class = {"one_class_per_pixel": True, "contains": [["cup", "cup"]], "excludes": [["cup", "disc"]]}
    assert len(compile_knowledge_base({"annotations": []}, 4, (4, 4), class_names=CLASSES, priors=one_class)) == 3


def test_a_priors_file_is_checked_when_loaded(tmp_path):
    path = tmp_path / "priors.yaml"
    path.write_text("contains: [[cup, disc]]\none_class_per_pixel: true\n")
    with pytest.raises(PriorsError, match=rf"^--priors: {path}: contains\[cup->disc\] and one_class_per_pixel contra"):
        load_priors(path, CLASSES)
    path.write_text("excludes: [[cup, lid]]\n")
    with pytest.raises(PriorsError, match=r": excludes\[cup,lid\]: unknown class 'lid'; the classes are"):
        load_priors(path, CLASSES)
