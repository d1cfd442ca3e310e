"""GrabCut-strength colour models for ``logic-refine``: Gaussian mixtures (batched EM) and the exact
minimum cut (``finish=graphcut``), on toy images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.pipelines.test_real_photo_methods import iou, ring_misleads, run_method
from wsseg_fast.pipelines.methods import MethodError, parse_options
from wsseg_fast.pipelines.methods import graphcut as graphcut_module
from wsseg_fast.pipelines.methods.colour import colour_evidence, colour_features, fit_gmm, gmm_log_density
from wsseg_fast.pipelines.methods.graphcut import contrast_weights, min_cut
from wsseg_fast.pipelines.methods.logic_refine import refine

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def two_colour_object(seed: int = 0):
    """A red-and-blue object (a red bar over a blue bar) on noisy grey; its box is twice its area."""
    rng = np.random.default_rng(seed)
    image = 120 + 8 * rng.standard_normal((60, 60, 3))
    truth = np.zeros((60, 60), bool)
    truth[15:45, 15:30] = True
    image[15:30, 15:30] = (210, 40, 40) + 8 * rng.standard_normal((15, 15, 3))
    image[30:45, 15:30] = (40, 60, 210) + 8 * rng.standard_normal((15, 15, 3))
    box = np.array([[15, 15, 45, 45]], np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), truth, box


def test_fit_gmm_recovers_two_colours():
    rng = np.random.default_rng(0)
    red = rng.normal((200, 40, 40), 5, (300, 3))
    blue = rng.normal((40, 60, 200), 5, (100, 3))
    x = torch.from_numpy(np.concatenate([red, blue]))[None]
    weight = torch.ones(1, 400, dtype=torch.float64)
    log_weights, means, cov = fit_gmm(torch.cat([x, x.flip(1)]), torch.cat([weight, weight]), 2, 5)
    for b in range(2):  # the same mixture whatever the samples' order
        order = means[b, :, 0].argsort(descending=True)
        torch.testing.assert_close(
            means[b, order], torch.tensor([[200.0, 40, 40], [40, 60, 200]], dtype=torch.float64), atol=2.0, rtol=0
        )
        torch.testing.assert_close(
            log_weights[b, order].exp(), torch.tensor([0.75, 0.25], dtype=torch.float64), atol=0.02, rtol=0
        )
        assert torch.allclose(
            torch.diagonal(cov[b], dim1=-2, dim2=-1).sqrt(), torch.tensor(5.0, dtype=torch.float64), atol=1.0
        )
    # a padded set (weight 0) fits as if the padding were not there
    padded = torch.cat([x, torch.zeros(1, 50, 3, dtype=torch.float64)], 1)
    mask = torch.cat([weight, torch.zeros(1, 50, dtype=torch.float64)], 1)
    torch.testing.assert_close(fit_gmm(padded, mask, 2, 5)[1], fit_gmm(x, weight, 2, 5)[1])
    density = gmm_log_density(
        torch.tensor([[200.0, 40, 40], [120, 120, 120]], dtype=torch.float64),
        *(t[0] for t in (log_weights, means, cov)),
    )
    assert density[0] > density[1] + 50


def interleaved_tones(seed: int = 0):
    """A two-tone object (black over light grey) on a two-tone background (dark grey left, white right):
    in lightness the object's tones and the background's interleave, 20 < 85 < 150 < 215, so no single
    Gaussian of each side can tell them apart (the two means lie between the tones)."""
    rng = np.random.default_rng(seed)
    image = np.empty((60, 60, 3))
    image[:, :30], image[:, 30:] = 85, 215
    truth = np.zeros((60, 60), bool)
    truth[15:45, 22:38] = True
    image[15:30, 22:38], image[30:45, 22:38] = 20, 150
    image = np.clip(image + 6 * rng.standard_normal(image.shape), 0, 255).astype(np.uint8)
    return image, truth, np.array([[15, 15, 45, 45]], np.float32)


def inside_box(box, shape):
    x0, y0, x1, y1 = np.asarray(box[0], int)
    inside = np.zeros(shape, bool)
    inside[y0:y1, x0:x1] = True
    return inside


def test_two_components_separate_interleaved_tones_that_one_gaussian_cannot():
    image, truth, box = interleaved_tones()
    inside = inside_box(box, truth.shape)

    def found(**model):  # the object's colours from its true mask: only the models differ
        return (colour_evidence(image, box, [{}], truth[None], ring=6, **model)[0] > 0) & inside

    assert iou(found(model="gaussian"), truth) < 0.5  # half of each side on the wrong side of one boundary
    assert iou(found(model="gmm", components=1), truth) < 0.5  # a one-component mixture is that Gaussian
    assert iou(found(model="gmm", components=2), truth) > 0.85  # the rest: 3x3-smoothed pixels at the edges
    assert iou(found(model="gmm", components=2, space="rgb"), truth) > 0.85


def test_unmix_drops_the_background_seen_through_the_box():
    """Fitted to its whole box, the object's mixture also models the background in the box, with the
    share it has there: the log-ratio at that colour is only log(share in box / share around), ~ -0.7
    here. ``unmix`` drops the components the surroundings explain as well."""
    image, truth, box = two_colour_object()
    inside = inside_box(box, truth.shape)
    background_in_box = inside & ~truth
    evidence = {
        unmix: colour_evidence(image, box, [{}], inside[None], ring=6, model="gmm", unmix=unmix)[0]
        for unmix in (False, True)
    }
    assert -1.5 < np.median(evidence[False][background_in_box]) < 0
    assert np.median(evidence[True][background_in_box]) < -4
    assert (evidence[True][truth] > 0).mean() > 0.95  # both of the object's colours stay


def test_off_mask_pixels_join_the_surroundings():
    """``refit=both``'s model: the mask of a first round holds the object and two columns of the sky
    seen through the box, which the 6-pixel ring never sees; with ``off_mask`` the box's other sky
    pixels teach the background model the sky, and the sky's evidence turns negative."""
    image, truth, ann = ring_misleads()
    box = np.array([[45, 62, 90, 77]], np.float32)
    mask = truth.copy()
    mask[62:77, 75:77] = True
    sky_in_box = inside_box(box, truth.shape) & ~mask
    for model in ("gaussian", "gmm"):
        evidence = {
            off: colour_evidence(image, box, [{}], mask[None], ring=6, model=model, off_mask=off)[0]
            for off in (False, True)
        }
        assert np.median(evidence[False][sky_in_box]) > 2  # the object's colours hold sky, the ring none
        assert np.median(evidence[True][sky_in_box]) < -2
        assert (evidence[True][truth] > 0).mean() > 0.95


def test_logic_refine_with_mixtures_finds_two_tone_objects():
    for image, truth, box in (two_colour_object(1), interleaved_tones(1)):
        x0, y0, x1, y1 = box[0].tolist()
        ann = {"bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": 1}
        gaussian = iou(run_method("logic-refine", image, ann), truth)
        gmm = iou(run_method("logic-refine", image, ann, colour_model="gmm", unmix=True), truth)
        assert gmm > 0.8 and gmm > gaussian + 0.05


def test_logic_refine_models_the_whole_image_outside_the_box():
    """The sky seen through the box (its right third) is nowhere in the 6-pixel ring: only a
    background model of the whole image outside the box (``colour_ring=-1``) knows it."""
    image, truth, ann = ring_misleads()
    sky_in_box = np.zeros_like(truth)
    sky_in_box[62:77, 77:90] = True
    for model in ({}, {"colour_model": "gmm", "unmix": True}):
        ring = run_method("logic-refine", image, ann, **model)
        whole = run_method("logic-refine", image, ann, colour_ring=-1, **model)
        assert ring[sky_in_box].mean() > 0.9 and whole[sky_in_box].mean() < 0.4
        assert iou(whole, truth) > 0.85 > 0.7 > iou(ring, truth)


def energy(labels, unary, right, down):
    """The cut's energy of ``labels`` ``[..., H, W]`` (a batch of labellings, or one)."""
    return (
        np.where(labels, np.maximum(-unary, 0), np.maximum(unary, 0)).sum((-2, -1))
        + (right * (labels[..., :, 1:] != labels[..., :, :-1])).sum((-2, -1))
        + (down * (labels[..., 1:, :] != labels[..., :-1, :])).sum((-2, -1))
    )


def brute_force(unary, right, down):
    """Every labelling of a tiny grid: ``(the least energy's labelling, the two least energies)``."""
    h, w = unary.shape
    labels = ((np.arange(2 ** (h * w))[:, None] >> np.arange(h * w)) & 1).astype(bool).reshape(-1, h, w)
    energies = energy(labels, unary, right, down)
    return labels[energies.argmin()], np.sort(energies)[:2]


def solvers():
    return ["scipy"] + (["pymaxflow"] if graphcut_module._maxflow is not None else [])


@pytest.mark.parametrize("shape", [(3, 3), (2, 6), (4, 4)])
def test_min_cut_is_the_exact_minimum(shape):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        unary = rng.normal(0, 1.5, shape)
        right, down = rng.uniform(0, 1.5, (shape[0], shape[1] - 1)), rng.uniform(0, 1.5, (shape[0] - 1, shape[1]))
        _, (least, _) = brute_force(unary, right, down)
        for solver in solvers():
            # scipy's flow is on integers (the energy scaled by 1e4 and rounded): exact to ~1e-3
            assert energy(min_cut(unary, right, down, solver), unary, right, down) == pytest.approx(least, abs=1e-3)


def test_the_graphcut_finish_is_the_least_energy_labelling_of_the_box():
    """logic-refine's ``finish=graphcut`` on a 4x4 box: the brute-force minimum over all 2^16 labellings
    of the box, for the logits that ``finish=threshold`` thresholds and the contrast weights of the image;
    it differs from their sign, and nothing outside the box changes."""
    rng = np.random.default_rng(0)
    image = np.full((12, 14, 3), 110.0)
    image[3:7, 4:6] = (200, 40, 40)
    image = np.clip(image + 45 * rng.standard_normal(image.shape), 0, 255).astype(np.uint8)
    boxes = np.array([[4, 3, 8, 7]], np.float32)
    options = {"keep_seeded": False, "cut_weight": 1.0}
    logits = refine(image, boxes, [{}], parse_options("logic-refine", options))
    cut = refine(image, boxes, [{}], parse_options("logic-refine", {**options, "finish": "graphcut"}))
    unary = logits[0, 3:7, 4:8].astype(np.float64)
    right, down = contrast_weights(colour_features(image, "lab"), 1.0)
    best, (least, second) = brute_force(unary, right[3:7, 4:7], down[3:6, 4:8])
    assert second - least > 0.05  # one minimum, well clear of the integer flow's rounding
    assert ((cut[0, 3:7, 4:8] > 0) == best).all()
    assert (best != (unary > 0)).sum() >= 2  # the Potts term changed the labelling
    outside = np.ones((12, 14), bool)
    outside[3:7, 4:8] = False
    assert (cut[0][outside] == logits[0][outside]).all() and (cut[0][outside] < 0).all()


def test_the_cut_labels_a_noisy_unary_better_than_its_sign():
    rng = np.random.default_rng(1)
    truth = np.zeros((40, 50), bool)
    truth[10:30, 12:40] = True
    unary = np.where(truth, 1.0, -1.0) + rng.normal(0, 1.2, truth.shape)
    colours = np.where(truth[..., None], 200.0, 60.0) + rng.normal(0, 5, (40, 50, 3))
    right, down = contrast_weights(colours, 2.0)
    assert right.shape == (40, 49) and down.shape == (39, 50)
    assert right[0, 0] > 10 * right[15, 11]  # across the object's edge the Potts term is cheap
    cuts = [min_cut(unary, right, down, solver) for solver in solvers()]
    for cut in cuts:
        assert (cut != truth).sum() <= ((unary > 0) != truth).sum()
        assert iou(cut, truth) > 0.95 > iou(unary > 0, truth)
        assert energy(cut, unary, right, down) <= energy(unary > 0, unary, right, down)
    assert all((cut == cuts[0]).all() for cut in cuts)  # both solvers, one minimum
    with pytest.raises(ValueError, match="solver"):
        min_cut(unary, right, down, "magic")


def test_options_parse():
    options = parse_options(
        "logic-refine",
        ["colour_model=gmm", "components=3", "em_steps=4", "colour_space=rgb", "unmix=false", "finish=graphcut"]
        + ["cut_weight=2.5", "colour_ring=-1", "refit=both", "colour_samples=512"],
    )
    assert options["colour_model"] == "gmm" and options["components"] == 3 and options["cut_weight"] == 2.5
    assert options["colour_ring"] == -1 and options["unmix"] is False and options["finish"] == "graphcut"
    assert parse_options("grabcut", ["margin=20"])["margin"] == 20 and parse_options("grabcut")["margin"] == -1
    image, _, box = two_colour_object()
    for key, value in [("colour_model", "gmmm"), ("colour_space", "hsv"), ("finish", "crf"), ("refit", "all")]:
        with pytest.raises(MethodError, match=key):
            run_method("logic-refine", image, {"bbox": [15, 15, 30, 30], "category_id": 1}, **{key: value})
    with pytest.raises(MethodError, match="components"):
        parse_options("logic-refine", ["components=many"])
    for key, value in [("components", 0), ("em_steps", -1), ("colour_samples", 0), ("cut_weight", -1.0)]:
        with pytest.raises(MethodError, match=key):
            run_method("logic-refine", image, {"bbox": [15, 15, 30, 30], "category_id": 1}, **{key: value})
