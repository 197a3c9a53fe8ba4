"""Regenerate tests/golden/tiny.json: the tiny preset's weight digests and a slice of its output.

Run only when a numerics change is intended; the test suite compares against this file.
"""

import json
from pathlib import Path

from models.engine import generate
from models.presets import build_pipeline, weights_digest
from models.request import GenerationRequest

REQUEST = dict(model="tiny", prompt="a lighthouse on a cliff at dawn", seed=7)


def main() -> None:
    pipe = build_pipeline("tiny")
    gen = generate(GenerationRequest(**REQUEST))
    final = gen.latents["final"]
    golden = {
        "request": REQUEST,
        "digests": {name: weights_digest(getattr(pipe, name)) for name in ("transformer", "transformer_2", "text_encoder", "vae")},
        "final_latent_slice": [round(float(x), 6) for x in final.flatten()[:16]],
        "final_latent_norm": round(float(final.norm()), 5),
        "frames_mean": round(float(gen.frames.mean()), 4),
    }
    out = Path(__file__).resolve().parents[1] / "tests" / "golden" / "tiny.json"
    out.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
