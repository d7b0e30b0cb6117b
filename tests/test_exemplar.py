"""ExemplarPosterior: the exact posterior of a noised labelled set, its gradient, and bad input."""

import pytest
import torch

from diffusers_side.guidance.exemplar import ExemplarPosterior


def brute_force_log_posterior(x_t, images, labels, alpha_bar, targets):
    """log p(target | x_t) written out term by term (no shortcut), for autograd."""
    flat, exemplars = x_t.flatten(1), images.flatten(1).double()
    log_w = -((flat[:, None, :] - alpha_bar.sqrt() * exemplars[None]) ** 2).sum(-1) / (2 * (1 - alpha_bar))
    rows = [log_w[i][labels == targets[i]].logsumexp(0) - log_w[i].logsumexp(0) for i in range(len(flat))]
    return torch.stack(rows)


@pytest.fixture
def exemplar_set():
    torch.manual_seed(0)
    return torch.rand(30, 1, 4, 4) * 2 - 1, torch.randint(3, (30,))


@pytest.mark.parametrize("alpha_bar", [0.02, 0.5, 0.999])
def test_gradient_matches_autograd_of_the_posterior(exemplar_set, alpha_bar):
    images, labels = exemplar_set
    posterior = ExemplarPosterior(images, labels, num_classes=3)
    alpha_bar = torch.tensor(alpha_bar, dtype=torch.float64)
    x_t = torch.randn(5, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 0, 1])
    brute_force_log_posterior(x_t, images, labels, alpha_bar, targets).sum().backward()
    torch.testing.assert_close(posterior.gradient(x_t.detach(), alpha_bar, targets), x_t.grad)


def test_clean_image_shift_is_the_difference_of_posterior_means(exemplar_set):
    """sqrt(1 - abar) * grad, mapped to x0 (divide by sqrt(abar), times sqrt(1 - abar)), is E[m|c] - E[m]."""
    images, labels = exemplar_set
    posterior = ExemplarPosterior(images, labels, num_classes=3)
    alpha_bar = torch.tensor(0.3, dtype=torch.float64)
    x_t = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    targets = torch.tensor([2, 2])
    shift = posterior.gradient(x_t, alpha_bar, targets) * (1 - alpha_bar) / alpha_bar.sqrt()
    weights = posterior.log_weights(x_t, alpha_bar).softmax(dim=1)
    members = (labels == 2).double()
    target_weights = weights * members / (weights * members).sum(dim=1, keepdim=True)
    expected = ((target_weights - weights) @ images.flatten(1).double()).view_as(x_t)
    torch.testing.assert_close(shift, expected)


def test_predict_at_low_noise_is_the_nearest_exemplar_label(exemplar_set):
    images, labels = exemplar_set
    posterior = ExemplarPosterior(images, labels, num_classes=3)
    assert torch.equal(posterior.predict(images, torch.tensor(0.9999)), labels)


def test_bad_input_is_refused_with_the_values(exemplar_set):
    images, labels = exemplar_set
    with pytest.raises(ValueError, match="Labels must lie in 0..1"):
        ExemplarPosterior(images, labels, num_classes=2)
    with pytest.raises(ValueError, match=r"30 labels"):
        ExemplarPosterior(images[:5], labels, num_classes=3)
    posterior = ExemplarPosterior(images[labels != 1], labels[labels != 1], num_classes=3)
    with pytest.raises(ValueError, match="no exemplar"):
        posterior.gradient(torch.randn(1, 1, 4, 4), torch.tensor(0.5), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\(1, 8, 8\) do not match"):
        posterior.gradient(torch.randn(1, 1, 8, 8), torch.tensor(0.5), torch.tensor([0]))
