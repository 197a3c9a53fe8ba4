"""PoC benchmark: nonce throughput, honest/cheat distance measurement, detection power.

    .venv/bin/python benchmarks/bench_poc.py --preset tiny --device cpu
    python benchmarks/bench_poc.py --preset a14b-random --device cuda --nonces 16 --throughput-nonces 8 \
        --batch-sizes 1,2 --conditions batch:2,attention:_native_flash,fp8,wrong-expert

Writes benchmarks/results/poc_<preset>_<device>.json and .md and prints the tables. Throughput is
nonces per second of the full PoC forward (seeded inputs drawn on the CPU, scrambled forward,
projection), measured after one warm-up batch; the device is named in the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def throughput(preset: str, runtime, nonces: int, frames: int | None) -> dict:
    from models.poc import poc_shape, poc_vectors
    from models.presets import build_pipeline

    t0 = time.perf_counter()
    pipe = build_pipeline(preset, runtime)
    build_s = time.perf_counter() - t0
    shape = poc_shape(preset, frames=frames)
    with runtime.apply():
        poc_vectors(pipe, "bench-warmup", "bench", range(runtime.batch_size), shape=shape, runtime=runtime)
        t0 = time.perf_counter()
        poc_vectors(pipe, "bench-block", "bench", range(nonces), shape=shape, runtime=runtime)
        s = time.perf_counter() - t0
    tokens = shape.frames * (shape.height // 2) * (shape.width // 2)
    return {"batch_size": runtime.batch_size, "dtype": runtime.dtype, "offload": runtime.offload, "nonces": nonces,
            "seconds": s, "nonces_per_s": nonces / s, "s_per_nonce": s / nonces, "latent": list(shape.latent),
            "tokens_per_nonce": tokens, "pipeline_build_s": build_s, "peak_gb": _peak_gb(runtime.device)}


def _peak_gb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 1e9 if device.startswith("cuda") else None


def _throughput_plan(batch_sizes: str, frames: int | None, extra: str) -> list[tuple[int | None, int]]:
    plan = [(frames, int(b)) for b in batch_sizes.split(",") if b.strip()]
    for part in filter(None, (p.strip() for p in extra.split(","))):
        f, _, b = part.partition("x")
        if not (f.isdigit() and b.isdigit()):
            raise SystemExit(f"--extra-throughput: {part!r} is not FRAMESxBATCH (e.g. 81x1)")
        plan.append((int(f), int(b)))
    return plan


def _parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--offload", nargs="?", const="all", default="none", choices=("none", "text-encoder", "all"),
                    help="components kept in host memory (bare --offload: all; a14b-random on 80 GB)")
    ap.add_argument("--dtype", default=None, help="reference dtype (default float32 on cpu, bfloat16 on cuda)")
    ap.add_argument("--nonces", type=int, default=256, help="nonces per measured condition (0: skip)")
    ap.add_argument("--conditions", default=None, help="comma-separated conditions (default: all for the device)")
    ap.add_argument("--throughput-nonces", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--frames", type=int, default=None, help="PoC frames (default: preset's smallest request)")
    ap.add_argument("--extra-throughput", default="", help="more throughput points, FRAMESxBATCH,... (e.g. 81x1)")
    ap.add_argument("--tag", default="", help="suffix of the result files (e.g. the card: h100)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return ap.parse_args(argv)


def _throughput_section(args, dtype: str, machine: str, result: dict, out: Path, stem: str, console) -> list[str]:
    """Every throughput point, its table, and the markdown section; the JSON is rewritten after each point."""
    from rich.table import Table

    from models.request import Runtime

    rows = []
    for frames, bs in _throughput_plan(args.batch_sizes, args.frames, args.extra_throughput):
        r = throughput(args.preset, Runtime(device=args.device, dtype=dtype, batch_size=bs, offload=args.offload),
                       args.throughput_nonces, frames)
        rows.append(r)
        console.print(f"batch {bs}, latent {r['latent']}: {r['nonces_per_s']:.2f} nonces/s")
        result["throughput"] = rows
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1))  # partial results survive a time limit
    result["throughput"] = rows
    t = Table(title=f"PoC nonce throughput ({args.preset}, {machine})")
    for col in ("batch", "dtype", "latent", "tokens/nonce", "nonces", "seconds", "nonces/s", "s/nonce"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["batch_size"]), r["dtype"], "x".join(map(str, r["latent"])), str(r["tokens_per_nonce"]),
                  str(r["nonces"]), f"{r['seconds']:.2f}", f"{r['nonces_per_s']:.2f}", f"{r['s_per_nonce']:.4f}")
    console.print(t)

    md = ["## Nonce throughput", "", "| batch | dtype | latent | tokens/nonce | nonces/s | s/nonce |",
          "|---|---|---|---|---|---|"]
    md += [f"| {r['batch_size']} | {r['dtype']} | {'x'.join(map(str, r['latent']))} | {r['tokens_per_nonce']} | "
           f"{r['nonces_per_s']:.2f} | {r['s_per_nonce']:.4f} |" for r in rows]
    if args.device.startswith("cuda"):
        md += ["", f"Offload: {args.offload}; peak device memory {max(r['peak_gb'] for r in rows):.1f} GB; "
               f"pipeline build {rows[0]['pipeline_build_s']:.1f} s."]
    return md


def _mismatch_section(args, dtype: str, result: dict, console) -> tuple[dict, list[str]]:
    """Measure every condition against the reference; the mismatch rate per threshold, table and markdown."""
    from rich.table import Table

    from models.request import Runtime
    from sim.poc.measure import measure

    conds = tuple(c.strip() for c in args.conditions.split(",")) if args.conditions else None
    data = measure(args.preset, nonces=args.nonces, conditions=conds, frames=args.frames,
                   reference=Runtime(device=args.device, dtype=dtype, batch_size=1, offload=args.offload),
                   progress=lambda c: console.print(f"measuring {c}"))
    result["measurement"] = {k: v for k, v in data.items() if k != "conditions"}
    result["measurement"]["medians"] = {
        k: (sorted(v["distances"])[len(v["distances"]) // 2] if "distances" in v else v.get("error"))
        for k, v in data["conditions"].items()}
    ths = data["thresholds"]
    t = Table(title=f"share of nonces with distance over each threshold (reference {dtype}, batch 1)")
    t.add_column("condition")
    t.add_column("kind")
    for th in ths:
        t.add_column(f"{th:g}")
    md = ["", "## Mismatch rate per threshold", "",
          f"Reference: {dtype}, batch 1, {args.nonces} nonces. Share of nonces whose vector lies further "
          "than the threshold (L2) from the reference's.", "",
          "| condition | kind | median | " + " | ".join(f"{th:g}" for th in ths) + " |",
          "|---|---|---|" + "---|" * len(ths)]
    for cond, c in data["conditions"].items():
        if "distances" not in c:
            t.add_row(cond, c["kind"], *(["n/a"] * len(ths)))
            md.append(f"| {cond} | {c['kind']} | n/a ({c['error'][:60]}) |" + " |" * len(ths))
            continue
        rates = data["rates"][cond]
        t.add_row(cond, c["kind"], *(f"{rates[f'{th:g}']:.3f}" for th in ths))
        md.append(f"| {cond} | {c['kind']} | {result['measurement']['medians'][cond]:.3g} | "
                  + " | ".join(f"{rates[f'{th:g}']:.3f}" for th in ths) + " |")
    console.print(t)
    md += ["", "Recommended threshold (smallest with every benign condition at most 2% mismatches): "
           f"{data['recommended_threshold']}"]
    return data, md


def _power_section(data: dict, raw: Path, result: dict, console) -> list[str]:
    """Write the raw measurement to `raw`; the detection power of each cheat it can price, table and markdown."""
    from rich.table import Table

    from sim.poc.measure import Measurement, write_measurement
    from sim.poc.params import PocParams
    from sim.poc.power import DEFAULT_CHEATS, DEFAULT_SAMPLE_SIZES, power_table

    write_measurement(data, raw)
    m = Measurement(data, str(raw))
    honest = "dtype:bfloat16" if "dtype:bfloat16" in data["conditions"] else next(
        k for k, v in data["conditions"].items() if v["kind"] == "benign" and "distances" in v)
    params = PocParams(distance_threshold=data["recommended_threshold"] or PocParams().distance_threshold,
                       honest_condition=honest)
    have = {k for k, v in data["conditions"].items() if "distances" in v}
    need = {"fp8": "fp8", "int4": "int4", "one-expert": "wrong-expert", "fabricate": "fabricated", "copy": "copied"}
    cheats = [c for c in DEFAULT_CHEATS if need.get(c.split(":")[0], honest) in have]
    prow = power_table(m, params, cheats=cheats, sample_sizes=DEFAULT_SAMPLE_SIZES)
    result["power"] = {"threshold": params.distance_threshold, "honest_condition": honest, "rows": prow}
    t = Table(title=f"P(reject) per sample size (threshold {params.distance_threshold:g}, honest = {honest})")
    t.add_column("strategy")
    t.add_column("leaf mismatch")
    for n in DEFAULT_SAMPLE_SIZES:
        t.add_column(f"n={n}")
    md = ["", f"## Detection power (threshold {params.distance_threshold:g}, honest nodes = {honest}, "
          "allowed rate 0.1, p < 0.05)", "",
          "| strategy | leaf mismatch | " + " | ".join(f"n={n}" for n in DEFAULT_SAMPLE_SIZES) + " |",
          "|---|---|" + "---|" * len(DEFAULT_SAMPLE_SIZES)]
    for spec in cheats:
        r = [x for x in prow if x["strategy"] == spec]
        q = "structural" if r[0]["leaf_mismatch_rate"] is None else f"{r[0]['leaf_mismatch_rate']:.3f}"
        t.add_row(spec, q, *(f"{x['p_reject']:.3f}" for x in r))
        md.append(f"| {spec} | {q} | " + " | ".join(f"{x['p_reject']:.3f}" for x in r) + " |")
    console.print(t)
    return md


def main(argv=None) -> int:
    args = _parse(argv)

    from rich.console import Console

    from sim.poc.measure import machine_description

    console = Console(width=160)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    machine = machine_description(args.device)
    console.print(f"[bold]PoC benchmark[/] preset={args.preset} device={args.device} dtype={dtype} on {machine}")
    result: dict = {"preset": args.preset, "device": args.device, "dtype": dtype, "machine": machine,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"poc_{args.preset}_{args.device.split(':')[0]}" + (f"_{args.tag}" if args.tag else "")
    result["offload"] = args.offload
    md = [f"# PoC benchmark: {args.preset} on {args.device} ({machine})", "", f"created {result['created']}", ""]
    md += _throughput_section(args, dtype, machine, result, out, stem, console)
    if args.nonces > 0:
        data, section = _mismatch_section(args, dtype, result, console)
        md += section
        md += _power_section(data, out / f"poc_measure_{stem.removeprefix('poc_')}.json", result, console)

    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
    console.print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
