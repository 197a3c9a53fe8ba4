"""Is the Wan VAE decode bit-reproducible on a GPU? Decodes one latent several times with the
A14B VAE configuration (seeded weights, float32) and reports whether the frames match, first with
the project's runtime settings, then with strict deterministic algorithms (which names the op that
has no deterministic implementation, if any).

    python benchmarks/gpu_vae_determinism.py --out DIR [--latent 5x60x104]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--latent", default="5x60x104")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    from diffusers import AutoencoderKLWan

    from models.presets import PRESETS, parameters_on_meta, materialize
    from models.request import Runtime

    with parameters_on_meta():
        vae = AutoencoderKLWan(**PRESETS["a14b-random"].vae_config)
    materialize(vae, 0, torch.float32, torch.device(args.device), prefix="vae.")
    vae.to(args.device).eval()
    t, h, w = (int(x) for x in args.latent.split("x"))
    z = torch.randn(1, 16, t, h, w, generator=torch.Generator().manual_seed(0)).to(args.device)
    res = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "latent": args.latent}
    outs = []
    with Runtime(device=args.device).apply(), torch.no_grad():
        for _ in range(3):
            outs.append(vae.decode(z, return_dict=False)[0].float().cpu())
    res["runtime_settings"] = {
        "bit_identical": [bool(torch.equal(outs[0], o)) for o in outs[1:]],
        "max_abs_diff": [float((outs[0] - o).abs().max()) for o in outs[1:]],
        "uint8_frames_identical": [bool(torch.equal(((outs[0] + 1) * 127.5).round(), ((o + 1) * 127.5).round())) for o in outs[1:]],
    }
    try:
        torch.use_deterministic_algorithms(True, warn_only=False)
        with torch.no_grad():
            a = vae.decode(z, return_dict=False)[0].float().cpu()
            b = vae.decode(z, return_dict=False)[0].float().cpu()
        res["strict"] = {"ran": True, "bit_identical": bool(torch.equal(a, b))}
    except RuntimeError as err:
        res["strict"] = {"ran": False, "error": str(err)[:600]}
    finally:
        torch.use_deterministic_algorithms(False)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_vae_determinism.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
