"""Not a speed benchmark: the divergence estimator against exact values on Gaussian data (docs/divergence.md).

Data N(mu, Sigma) at the digits' shape (1 x 16 x 16, D = 256) with the linear 1000-step `DDPMScheduler`
schedule, and the exact epsilon-predictor `GaussianEpsilonModel`, so p_theta = N(mu, Sigma + sigma_min^2 I)
in closed form. For an isotropic Sigma and for a rotated anisotropic one it prints the error of the ODE's
log p_theta per image (relative, in nats and in bits/dim) at several solver tolerances and probe counts,
and the divergence M of a one-image data set (whose q_eps is one Gaussian) against its closed form.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/divergence_gaussian_check.py --output /work/outputs/divergence/gaussian.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from diffusers_side.audits.divergence import memorization_divergence
from diffusers_side.audits.gaussian_check import (
    GaussianEpsilonModel,
    exact_log_density,
    exact_single_image_divergence,
)
from diffusers_side.audits.likelihood import ode_log_likelihood

SETTINGS = [(1e-3, 1), (1e-4, 1), (1e-5, 1), (1e-4, 8)]  # (rtol = atol, Rademacher probes)


def models(seed: int) -> dict[str, GaussianEpsilonModel]:
    stds = np.geomspace(0.02, 0.4, 256).tolist()  # 20x spread of scales: a Jacobian far from a multiple of I
    return {
        "isotropic s=0.2": GaussianEpsilonModel(in_channels=1, sample_size=16, std=0.2),
        "rotated anisotropic s=0.02..0.4": GaussianEpsilonModel(in_channels=1, sample_size=16, stds=stds, rotation_seed=seed),
    }


def check(model: GaussianEpsilonModel, num_images: int, seed: int) -> list[dict]:
    images = model.sample_data(num_images, torch.Generator().manual_seed(seed))
    exact = exact_log_density(model, images).numpy()
    rows = []
    for tol, probes in SETTINGS:
        started = time.process_time()
        estimate = ode_log_likelihood(
            model, model.scheduler.alphas_cumprod, images, num_probes=probes, rtol=tol, atol=tol,
            generator=torch.Generator().manual_seed(seed + 1),
        )
        error = estimate.log_px - exact
        rows.append({
            "rtol": tol, "probes": probes, "nfe": estimate.num_function_evals, "cpu_s": time.process_time() - started,
            "mean_exact_log_p": float(exact.mean()), "max_rel_error": float(np.max(np.abs(error) / np.abs(exact))),
            "mean_error_nats": float(error.mean()), "rms_error_nats": float(np.sqrt((error**2).mean())),
            "mean_error_bpd": float(error.mean() / (256 * math.log(2))),
        })
    return rows


def divergence_rows(model: GaussianEpsilonModel, seed: int, num_samples: int) -> list[dict]:
    image = model.sample_data(1, torch.Generator().manual_seed(seed))
    rows = []
    for eps in (None, 0.05):  # default (sigma_min) and a wider one
        result = memorization_divergence(
            (model, model.scheduler), image.repeat(2, 1, 1, 1), eps=eps, num_samples=num_samples, seed=seed
        )
        exact = exact_single_image_divergence(model, image[0], result.eps)
        rows.append({
            "eps": result.eps, "M": result.train.value, "ci": [result.train.ci_low, result.train.ci_high],
            "exact_M": exact, "rel_error": (result.train.value - exact) / exact,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=50)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    report = {}
    print("| data | rtol | probes | UNet evals | mean log p | max rel. error | mean error (nats) | RMS error (nats) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, model in models(args.seed).items():
        rows = check(model, args.num_images, args.seed)
        report[name] = {"log_p": rows, "divergence": divergence_rows(model, args.seed, args.num_samples)}
        for r in rows:
            print(
                f"| {name} | {r['rtol']:g} | {r['probes']} | {r['nfe']} | {r['mean_exact_log_p']:.1f} | "
                f"{100 * r['max_rel_error']:.3f} % | {r['mean_error_nats']:+.3f} | {r['rms_error_nats']:.3f} |"
            )
    print("\n| data | eps | M estimated (95 % CI) | M exact | error |\n|---|---|---|---|---|")
    for name, entry in report.items():
        for r in entry["divergence"]:
            print(
                f"| {name} | {r['eps']:.4g} | {r['M']:.2f} ({r['ci'][0]:.2f}, {r['ci'][1]:.2f}) | {r['exact_M']:.2f} "
                f"| {100 * r['rel_error']:+.2f} % |"
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, **report}, indent=1))


if __name__ == "__main__":
    main()
