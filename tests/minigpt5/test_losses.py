"""The three losses against hand-written references."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from minigpt5.losses import IGNORE_INDEX, cap_loss, compute_snr, diffusion_target, ldm_loss, text_loss


# ---- text loss ----

def _reference_text_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Explicit loop: logits at t predict labels at t + 1; masked mean of -log softmax."""
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    terms = []
    B, T, _ = logits.shape
    for b in range(B):
        for t in range(T - 1):
            target = int(labels[b, t + 1])
            if target != IGNORE_INDEX:
                terms.append(-log_probs[b, t, target])
    return torch.stack(terms).mean()


def test_text_loss_matches_manual_shifted_masked_mean():
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 7, 11
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 3:] = IGNORE_INDEX  # padding
    labels[1, :2] = IGNORE_INDEX  # prompt
    labels[2, 4] = IGNORE_INDEX  # a forced voken
    loss = text_loss(logits, labels)
    expected = _reference_text_loss(logits, labels)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_text_loss_ignores_label_at_position_zero_and_last_logit():
    """Nothing predicts position 0 and the last position's logits predict nothing."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 6, generator=g)
    labels = torch.randint(0, 6, (2, 5), generator=g)
    base = text_loss(logits, labels)
    changed_labels = labels.clone()
    changed_labels[:, 0] = (labels[:, 0] + 1) % 6
    changed_logits = logits.clone()
    changed_logits[:, -1] += torch.randn(2, 6, generator=g) * 10
    assert torch.equal(text_loss(logits, changed_labels), base)
    assert torch.equal(text_loss(changed_logits, labels), base)
    # A logit that does predict something changes the loss.
    shifted = logits.clone()
    shifted[0, 0, labels[0, 1]] += 5.0
    assert text_loss(shifted, labels) < base


def test_text_loss_all_masked_is_zero_and_backprops():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.full((2, 4), IGNORE_INDEX)
    loss = text_loss(logits, labels)
    assert loss.item() == 0.0
    assert torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ---- LDM loss ----

def _denoiser(noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for the UNet that depends on all three inputs."""
    t = timesteps.float().view(-1, 1, 1, 1) / 1000.0
    return 0.7 * noisy + t + cond.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def _reference_ldm_loss(scheduler, x0, noise, timesteps, cond, prediction_type, gamma):
    ab = scheduler.alphas_cumprod.double()[timesteps].view(-1, 1, 1, 1)  # (N, 1, 1, 1)
    x0, noise = x0.double(), noise.double()
    noisy = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    if prediction_type == "epsilon":
        target = noise
    else:
        target = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    pred = _denoiser(noisy, timesteps, cond.double())
    per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3))  # (N,)
    if gamma is None:
        return per_sample.mean()
    snr = (ab / (1 - ab)).view(-1)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    weights = clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)
    return (per_sample * weights).mean()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("gamma", [5.0, 1.0, None])
def test_ldm_loss_matches_reference(prediction_type, gamma):
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    g = torch.Generator().manual_seed(2)
    N = 5
    x0 = torch.randn(N, 3, 8, 8, generator=g)
    noise = torch.randn(N, 3, 8, 8, generator=g)
    cond = torch.randn(N, 4, 6, generator=g)
    # Low t has SNR far above gamma, high t far below: both sides of the min are used.
    timesteps = torch.tensor([0, 20, 300, 700, 999])
    snr = compute_snr(scheduler, timesteps)
    if gamma is not None:
        assert (snr > gamma).any() and (snr < gamma).any()
    loss = ldm_loss(_denoiser, scheduler, x0, cond, noise=noise, timesteps=timesteps, min_snr_gamma=gamma)
    expected = _reference_ldm_loss(scheduler, x0, noise, timesteps, cond, prediction_type, gamma)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_min_snr_weighting_changes_the_loss():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    cond = torch.randn(4, 2, 6, generator=g)
    timesteps = torch.tensor([1, 5, 10, 50])  # all SNRs well above 5
    kwargs = dict(noise=noise, timesteps=timesteps)
    weighted = ldm_loss(_denoiser, scheduler, x0, cond, min_snr_gamma=5.0, **kwargs)
    plain = ldm_loss(_denoiser, scheduler, x0, cond, min_snr_gamma=None, **kwargs)
    assert weighted < plain


def test_diffusion_target_velocity_formula():
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    timesteps = torch.tensor([3, 400, 990])
    ab = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    torch.testing.assert_close(diffusion_target(scheduler, x0, noise, timesteps), expected)


def test_unsupported_prediction_type_raises():
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="sample")
    x0 = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="prediction_type"):
        ldm_loss(_denoiser, scheduler, x0, torch.randn(2, 2, 6), timesteps=torch.tensor([1, 2]))


def test_ldm_loss_draws_noise_and_timesteps_from_generator():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    x0 = torch.randn(4, 3, 8, 8)
    cond = torch.randn(4, 2, 6, requires_grad=True)
    a = ldm_loss(_denoiser, scheduler, x0, cond, generator=torch.Generator().manual_seed(7))
    b = ldm_loss(_denoiser, scheduler, x0, cond, generator=torch.Generator().manual_seed(7))
    c = ldm_loss(_denoiser, scheduler, x0, cond, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    a.backward()
    assert cond.grad is not None and cond.grad.abs().sum() > 0


# ---- CAP loss ----

def test_cap_loss_is_mse():
    g = torch.Generator().manual_seed(5)
    mapped = torch.randn(3, 77, 32, generator=g)
    target = torch.randn(3, 77, 32, generator=g)
    torch.testing.assert_close(cap_loss(mapped, target), ((mapped - target) ** 2).mean())
    assert cap_loss(target, target).item() == 0.0
    half = cap_loss(mapped.half(), target.half())
    assert half.dtype == torch.float32
