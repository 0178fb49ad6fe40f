"""TopK SAE training speed and quality: traitlens vs sae-lens vs a plain dense PyTorch TopK SAE.

All three train a TopK SAE (d=384, width=6144, k=32, batch 4096, Adam, constant lr) on the
same synthetic activations (sparse combinations of a hidden dictionary plus noise) for the same
number of tokens, each in its own process (so peak memory is its own), one after the other in one
run. Reported: tokens/s, step time / one dense 4096x384x6144 matmul, NMSE on held-out tokens,
peak RSS (the process, data included; on a GPU, peak GPU memory too). traitlens' step is timed
twice: the whole run divided by its steps (initialization and saving included, as tokens/s counts
them) and the steady step, the median time from one step's start to the next's (reading the batch,
the step, logging: what one more step costs). Then where the steady step's time goes, phase by phase.
``--precision bfloat16`` runs every trainer's products under bf16 autocast (traitlens'
``train --precision bfloat16``) and the reference matmul in bf16.

Usage: python benchmarks/sae_training.py [--steps 40] [--device cpu|cuda] [--precision float32|bfloat16]
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
TRAINERS = ("matmul", "phases", "traitlens", "traitlens-saelens-init", "saelens", "dense")


def autocast(device: str, precision: str) -> torch.autocast:
    return torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(run, device: str, repeats: int = 25, warmup: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times[warmup:]))


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


def run_matmul(device: str, precision: str) -> dict[str, float]:
    dtype = getattr(torch, precision)
    a, b = torch.randn(BATCH, D, device=device, dtype=dtype), torch.randn(D, WIDTH, device=device, dtype=dtype)
    return {"matmul_s": median_time(lambda: torch.mm(a, b), device)}


def run_phases(device: str, precision: str) -> dict[str, float]:
    """Where one steady traitlens step goes: the trainer's own pieces, each timed alone (median of
    repeats) on one batch of the synthetic tokens, after the SAE has trained a few steps."""
    from traitlens.sae import SAEConfig, sparse
    from traitlens.sae.model import SparseAutoencoder
    from traitlens.sae.sparse import blocked_topk

    sae = SparseAutoencoder(SAEConfig(d_in=D, width=WIDTH, activation="topk", k=K)).to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=LR)
    x_nd = torch.from_numpy(synthetic_tokens(BATCH, seed=1)).to(device)
    state: dict[str, torch.Tensor] = {}

    def forward() -> None:
        with autocast(device, precision):
            encoding = sae.encode_for_training(sae.normalize(x_nd))
            state["loss"] = (sae.decode_normalized(encoding) - sae.normalize(x_nd)).square().sum(1).mean()

    def select() -> None:
        with autocast(device, precision):
            blocked_topk(centered_nd, sae.W_enc, sae.b_enc, K)

    def backward() -> None:
        optimizer.zero_grad(set_to_none=True)
        state["loss"].backward(retain_graph=True)

    centered_nd = sae.normalize(x_nd) - sae.b_dec
    blocked = median_time(select, device)
    block_elements, sparse.BLOCK_ELEMENTS = sparse.BLOCK_ELEMENTS, BATCH * WIDTH  # one block: the product, then the top-k
    whole = median_time(select, device)
    sparse.BLOCK_ELEMENTS = block_elements
    timings = {
        "encoder product and top-k, the whole batch as one block": whole,
        "encoder product and top-k, in blocks of <= 24 MiB (what training runs)": blocked,
        "forward: normalize, encode, decode, loss": median_time(forward, device),
    }
    forward()
    timings["backward (sparse products)"] = median_time(backward, device)
    timings["Adam step"] = median_time(optimizer.step, device)
    return {f"phase: {name}": seconds for name, seconds in timings.items()}


def run_traitlens(steps: int, train_nd: np.ndarray, test_nd: np.ndarray, device: str, precision: str, saelens_init: bool = False,
                  steady: bool = False) -> dict[str, float]:
    """Our defaults (geometric-median decoder bias, inputs scaled to norm sqrt(d)), or with
    ``saelens_init`` sae-lens' (zero decoder bias, no input scaling) to compare the training math alone.
    With ``steady``, also the median time between the starts of consecutive steps."""
    from traitlens.distributed import Workers
    from traitlens.sae import RunConfig, SAEConfig, TrainConfig, load_sae_with_config
    from traitlens.sae.training import Trainer
    from traitlens.store import store_from_arrays

    step_starts: list[float] = []
    train_run = Trainer._train_run

    def timed_train_run(self: Trainer, *args: object) -> dict[str, float]:
        synchronize(device)
        step_starts.append(time.perf_counter())
        return train_run(self, *args)  # type: ignore[arg-type]

    with tempfile.TemporaryDirectory() as temp:
        store = store_from_arrays(Path(temp) / "acts", {"layer": train_nd})
        config = TrainConfig(acts=store, layer="layer", out=Path(temp) / "sae", n_tokens=steps * BATCH, batch_size=BATCH,
                             runs=(RunConfig(SAEConfig(d_in=D, width=WIDTH, activation="topk", k=K,
                                                       normalization="none" if saelens_init else "norm"), lr=LR),),
                             bias_init="zero" if saelens_init else "geometric_median", device=device,
                             warmup_steps=1, final_lr_fraction=1.0, checkpoint_every=10**9, log_every=10, precision=precision)
        trainer = Trainer(config, Workers(0, 1), resume=False)
        Trainer._train_run = timed_train_run  # type: ignore[method-assign]
        synchronize(device)
        start = time.perf_counter()
        (directory,) = trainer.fit(show_progress=False)
        synchronize(device)
        elapsed = time.perf_counter() - start
        sae, _ = load_sae_with_config(directory)
        result = {"step_s": elapsed / steps, "nmse": held_out_nmse(lambda x: sae(x.to(device))[1].cpu(), test_nd)}
        if steady:
            result["steady_step_s"] = float(np.median(np.diff(step_starts)))
        return result


def run_saelens(steps: int, train_nd: np.ndarray, test_nd: np.ndarray, device: str, precision: str) -> dict[str, float]:
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=WIDTH, k=K, dtype="float32", device=device))
    optimizer = torch.optim.Adam(sae.parameters(), lr=LR)
    since_fired = torch.zeros(WIDTH, dtype=torch.long, device=device)
    x_all = torch.from_numpy(train_nd).to(device)
    synchronize(device)
    start = time.perf_counter()
    for step in range(steps):
        x = x_all[step * BATCH : (step + 1) * BATCH]
        with autocast(device, precision):  # as sae-lens' own trainer does with autocast=True
            output = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=since_fired > 1_000_000,
                                                              n_training_steps=step, is_logging_step=False))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        since_fired = torch.where((output.feature_acts > 0).any(0), 0, since_fired + BATCH)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"step_s": elapsed / steps, "nmse": held_out_nmse(lambda x: sae.decode(sae.encode(x.to(device))).cpu(), test_nd)}


def run_dense(steps: int, train_nd: np.ndarray, test_nd: np.ndarray, device: str, precision: str) -> dict[str, float]:
    """The plain way: dense latents, topk by masking, autograd through dense products."""
    torch.manual_seed(0)
    w_dec = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(WIDTH, D), dim=1).to(device))
    w_enc = torch.nn.Parameter(w_dec.detach().t().clone())
    b_enc = torch.nn.Parameter(torch.zeros(WIDTH, device=device))
    b_dec = torch.nn.Parameter(torch.zeros(D, device=device))
    optimizer = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=LR)

    def forward(x: torch.Tensor) -> torch.Tensor:
        pre = (x - b_dec) @ w_enc + b_enc
        values, indices = pre.topk(K, dim=1)
        latents = torch.zeros_like(pre).scatter(1, indices, values.relu())
        return latents @ w_dec + b_dec

    x_all = torch.from_numpy(train_nd).to(device)
    synchronize(device)
    start = time.perf_counter()
    for step in range(steps):
        x = x_all[step * BATCH : (step + 1) * BATCH]
        with autocast(device, precision):
            recon = forward(x)
        loss = (recon.float() - x).square().sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"step_s": elapsed / steps, "nmse": held_out_nmse(lambda x: forward(x.to(device)).cpu(), test_nd)}


def child(which: str, steps: int, device: str, precision: str) -> None:
    torch.manual_seed(0)
    if which == "matmul":
        result = run_matmul(device, precision)
    elif which == "phases":
        result = run_phases(device, precision)
    else:
        train_nd, test_nd = synthetic_tokens(steps * BATCH, seed=1), synthetic_tokens(16384, seed=2)
        runners = {"traitlens": lambda *a: run_traitlens(*a, steady=True),
                   "traitlens-saelens-init": lambda *a: run_traitlens(*a, saelens_init=True),
                   "saelens": run_saelens, "dense": run_dense}
        result = runners[which](steps, train_nd, test_nd, device, precision)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--child", choices=TRAINERS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.device, args.precision)
        return
    results = {}
    for which in TRAINERS:
        output = subprocess.run([sys.executable, __file__, "--child", which, "--steps", str(args.steps), "--device", args.device,
                                 "--precision", args.precision],
                                check=True, capture_output=True, text=True).stdout
        results[which] = json.loads(output.strip().splitlines()[-1])
    matmul = results["matmul"]["matmul_s"]
    cuda = args.device == "cuda"
    where = torch.cuda.get_device_name() if cuda else f"{torch.get_num_threads()} CPU threads"
    print(f"TopK SAE d={D} width={WIDTH} k={K} batch={BATCH}, products in {args.precision}, {args.steps} steps, {where}")
    print(f"one dense {BATCH}x{D}x{WIDTH} matmul in {args.precision}: {matmul * 1e3:.1f} ms\n")
    memory = " peak GPU memory (MiB) |" if cuda else ""
    print(f"| trainer | tokens/s | step (s) | step / matmul | held-out NMSE | peak RSS (MiB) |{memory}")
    print("|---|---|---|---|---|---|" + ("---|" if cuda else ""))
    for name, label in (("traitlens", "traitlens"), ("traitlens-saelens-init", "traitlens, sae-lens' init"),
                        ("saelens", "sae-lens (TopKTrainingSAE)"), ("dense", "plain dense PyTorch")):
        r = results[name]
        gpu = f" {r['peak_gpu_mib']:.0f} |" if cuda else ""
        print(f"| {label} | {BATCH / r['step_s']:,.0f} | {r['step_s']:.3f} | {r['step_s'] / matmul:.2f} | {r['nmse']:.4f} "
              f"| {r['peak_rss_mib']:.0f} |{gpu}")
    t, s = results["traitlens"], results["saelens"]
    steady = t["steady_step_s"]
    print(f"\ntraitlens / sae-lens tokens/s: {s['step_s'] / t['step_s']:.2f}x (goal >= 1.5x)")
    print(f"traitlens step / matmul, whole run: {t['step_s'] / matmul:.2f} (goal <= 2.0)")
    print(f"traitlens steady step / matmul: {steady * 1e3:.1f} ms / {matmul * 1e3:.1f} ms = {steady / matmul:.2f} (goal <= 1.3)")
    same = results["traitlens-saelens-init"]
    print(f"NMSE, traitlens relative to sae-lens: {(t['nmse'] - s['nmse']) / s['nmse'] * 100:+.1f}% (goal within 2%);"
          f" with sae-lens' init: {(same['nmse'] - s['nmse']) / s['nmse'] * 100:+.1f}%")
    print("\n| where one steady step goes | ms | / matmul |\n|---|---|---|")
    for name, seconds in results["phases"].items():
        if name.startswith("phase: "):
            print(f"| {name.removeprefix('phase: ')} | {seconds * 1e3:.1f} | {seconds / matmul:.2f} |")
    print(f"| one dense {BATCH}x{D}x{WIDTH} matmul | {matmul * 1e3:.1f} | 1.00 |")


if __name__ == "__main__":
    main()
