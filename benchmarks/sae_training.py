"""TopK SAE training speed and quality: traitlens vs sae-lens vs a plain dense PyTorch TopK SAE.

All three train a TopK SAE (d=384, width=6144, k=32, batch 4096, fp32, Adam, constant lr) on the
same synthetic activations (sparse combinations of a hidden dictionary plus noise) for the same
number of tokens, each in its own process (so peak memory is its own), one after the other in one
run. Reported: tokens/s, step time / one dense 4096x384x6144 matmul, NMSE on held-out tokens,
peak RSS (the process, data included).

Usage: python benchmarks/sae_training.py [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

D, WIDTH, K, BATCH, LR = 384, 6144, 32, 4096, 5e-4
TRAINERS = ("matmul", "traitlens", "traitlens-saelens-init", "saelens", "dense")


def synthetic_tokens(n: int, seed: int) -> np.ndarray:
    """Tokens made of 24 of 8192 hidden unit directions with exponential magnitudes, plus noise."""
    dictionary = np.random.default_rng(0).standard_normal((8192, D)).astype(np.float32)
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    tokens = np.empty((n, D), dtype=np.float32)
    for start in range(0, n, 8192):
        rows = min(8192, n - start)
        atoms = rng.integers(0, 8192, (rows, 24))
        magnitudes = rng.exponential(1.0, (rows, 24)).astype(np.float32)
        tokens[start : start + rows] = np.einsum("nk,nkd->nd", magnitudes, dictionary[atoms])
    tokens += 0.05 * rng.standard_normal(tokens.shape).astype(np.float32) + 0.3
    return tokens


def held_out_nmse(reconstruct, tokens: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    x = torch.from_numpy(tokens)
    with torch.no_grad():
        recon = torch.cat([reconstruct(chunk) for chunk in x.split(BATCH)])
    return float((recon - x).double().square().sum() / (x - x.mean(0)).double().square().sum())


def run_matmul() -> dict[str, float]:
    a, b = torch.randn(BATCH, D), torch.randn(D, WIDTH)
    times = []
    for _ in range(25):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return {"matmul_s": float(np.median(times[5:]))}


def run_traitlens(steps: int, train_nd: np.ndarray, test_nd: np.ndarray, saelens_init: bool = False) -> dict[str, float]:
    """Our defaults (geometric-median decoder bias, inputs scaled to norm sqrt(d)), or with
    ``saelens_init`` sae-lens' (zero decoder bias, no input scaling) to compare the training math alone."""
    from traitlens.distributed import Workers
    from traitlens.sae import RunConfig, SAEConfig, TrainConfig, load_sae_with_config
    from traitlens.sae.training import Trainer
    from traitlens.store import store_from_arrays

    with tempfile.TemporaryDirectory() as temp:
        store = store_from_arrays(Path(temp) / "acts", {"layer": train_nd})
        config = TrainConfig(acts=store, layer="layer", out=Path(temp) / "sae", n_tokens=steps * BATCH, batch_size=BATCH,
                             runs=(RunConfig(SAEConfig(d_in=D, width=WIDTH, activation="topk", k=K,
                                                       normalization="none" if saelens_init else "norm"), lr=LR),),
                             bias_init="zero" if saelens_init else "geometric_median",
                             warmup_steps=1, final_lr_fraction=1.0, checkpoint_every=10**9, log_every=10)
        trainer = Trainer(config, Workers(0, 1), resume=False)
        start = time.perf_counter()
        (directory,) = trainer.fit(show_progress=False)
        elapsed = time.perf_counter() - start
        sae, _ = load_sae_with_config(directory)
        return {"step_s": elapsed / steps, "nmse": held_out_nmse(lambda x: sae(x)[1], test_nd)}


def run_saelens(steps: int, train_nd: np.ndarray, test_nd: np.ndarray) -> dict[str, float]:
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=WIDTH, k=K, dtype="float32", device="cpu"))
    optimizer = torch.optim.Adam(sae.parameters(), lr=LR)
    since_fired = torch.zeros(WIDTH, dtype=torch.long)
    x_all = torch.from_numpy(train_nd)
    start = time.perf_counter()
    for step in range(steps):
        x = x_all[step * BATCH : (step + 1) * BATCH]
        output = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=since_fired > 1_000_000,
                                                          n_training_steps=step, is_logging_step=False))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        since_fired = torch.where((output.feature_acts > 0).any(0), 0, since_fired + BATCH)
    elapsed = time.perf_counter() - start
    return {"step_s": elapsed / steps, "nmse": held_out_nmse(lambda x: sae.decode(sae.encode(x)), test_nd)}


def run_dense(steps: int, train_nd: np.ndarray, test_nd: np.ndarray) -> dict[str, float]:
    """The plain way: dense latents, topk by masking, autograd through dense products."""
    torch.manual_seed(0)
    w_dec = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(WIDTH, D), dim=1))
    w_enc = torch.nn.Parameter(w_dec.detach().t().clone())
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(WIDTH)), torch.nn.Parameter(torch.zeros(D))
    optimizer = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=LR)

    def forward(x: torch.Tensor) -> torch.Tensor:
        pre = (x - b_dec) @ w_enc + b_enc
        values, indices = pre.topk(K, dim=1)
        latents = torch.zeros_like(pre).scatter(1, indices, values.relu())
        return latents @ w_dec + b_dec

    x_all = torch.from_numpy(train_nd)
    start = time.perf_counter()
    for step in range(steps):
        x = x_all[step * BATCH : (step + 1) * BATCH]
        loss = (forward(x) - x).square().sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    elapsed = time.perf_counter() - start
    return {"step_s": elapsed / steps, "nmse": held_out_nmse(forward, test_nd)}


def child(which: str, steps: int) -> None:
    torch.manual_seed(0)
    if which == "matmul":
        result = run_matmul()
    else:
        train_nd, test_nd = synthetic_tokens(steps * BATCH, seed=1), synthetic_tokens(16384, seed=2)
        runners = {"traitlens": run_traitlens, "traitlens-saelens-init": lambda *a: run_traitlens(*a, saelens_init=True),
                   "saelens": run_saelens, "dense": run_dense}
        result = runners[which](steps, train_nd, test_nd)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--child", choices=TRAINERS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps)
        return
    results = {}
    for which in TRAINERS:
        output = subprocess.run([sys.executable, __file__, "--child", which, "--steps", str(args.steps)],
                                check=True, capture_output=True, text=True).stdout
        results[which] = json.loads(output.strip().splitlines()[-1])
    matmul = results["matmul"]["matmul_s"]
    print(f"TopK SAE d={D} width={WIDTH} k={K} batch={BATCH}, fp32, {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"one dense {BATCH}x{D}x{WIDTH} matmul: {matmul * 1e3:.1f} ms\n")
    print("| trainer | tokens/s | step (s) | step / matmul | held-out NMSE | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, label in (("traitlens", "traitlens"), ("traitlens-saelens-init", "traitlens, sae-lens' init"),
                        ("saelens", "sae-lens (TopKTrainingSAE)"), ("dense", "plain dense PyTorch")):
        r = results[name]
        print(f"| {label} | {BATCH / r['step_s']:,.0f} | {r['step_s']:.3f} | {r['step_s'] / matmul:.2f} | {r['nmse']:.4f} "
              f"| {r['peak_rss_mib']:.0f} |")
    t, s = results["traitlens"], results["saelens"]
    print(f"\ntraitlens / sae-lens tokens/s: {s['step_s'] / t['step_s']:.2f}x (goal >= 1.5x)")
    print(f"traitlens step / matmul: {t['step_s'] / matmul:.2f} (goal <= 2.0)")
    same = results["traitlens-saelens-init"]
    print(f"NMSE, traitlens relative to sae-lens: {(t['nmse'] - s['nmse']) / s['nmse'] * 100:+.1f}% (goal within 2%);"
          f" with sae-lens' init: {(same['nmse'] - s['nmse']) / s['nmse'] * 100:+.1f}%")


if __name__ == "__main__":
    main()
