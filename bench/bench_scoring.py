"""Scoring throughput: diffalign's CLIP scorer vs. the torchmetrics ``CLIPScore`` definition.

Both paths score the same images with the same ``CLIPModel``:

* **reference** — what torchmetrics' ``CLIPScore`` does: official ``CLIPProcessor`` on uint8
  images (resize/crop/normalise outside the graph), ``get_image_features``/``get_text_features``,
  ``100·cos``. (torchmetrics 1.9 itself breaks on transformers 5, so its definition is timed.)
* **diffalign** — ``scorers.load("clip", model=...)``: tensor preprocessing on the device, batched,
  differentiable.

By default a small random CLIP (ViT-B/32-like widths, 224 px input) is built offline in a temporary
folder; ``--model`` takes a real local CLIP folder or hub id. Run::

    python bench/bench_scoring.py --images 64 --batch-size 16 --size 512
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_small_clip(path: Path, width: int, layers: int) -> Path:
    from transformers import CLIPConfig, CLIPModel

    from tests.tiny.scorers import clip_processor

    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                         num_attention_heads=max(1, width // 64), max_position_embeddings=77,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=max(1, width // 64), image_size=224, patch_size=32),
        projection_dim=width,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(path)
    clip_processor(path, image_size=224)
    return path


def reference_scores(model, processor, images: torch.Tensor, prompts: list[str], device) -> torch.Tensor:
    uint8 = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    inputs = processor(text=prompts, images=list(uint8), return_tensors="pt", padding=True)
    img = model.get_image_features(pixel_values=inputs["pixel_values"].to(device))
    txt = model.get_text_features(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device))
    img = img if isinstance(img, torch.Tensor) else img.pooler_output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    return 100 * torch.nn.functional.cosine_similarity(img, txt, dim=-1)


def timed(fn, repeats: int, device) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="CLIP folder or hub id (default: a small random CLIP built offline)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="input image side (pixels)")
    parser.add_argument("--width", type=int, default=256, help="width of the built random CLIP")
    parser.add_argument("--layers", type=int, default=4, help="layers of the built random CLIP")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    from transformers import CLIPModel, CLIPProcessor

    from diffalign import scorers

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or build_small_clip(Path(tmp) / "clip", args.width, args.layers)
        ours = scorers.load("clip", model=model_path, clamp=False, device=device, batch_size=args.batch_size)
        model = CLIPModel.from_pretrained(str(model_path)).eval().to(device)
        processor = CLIPProcessor.from_pretrained(str(model_path))

        generator = torch.Generator().manual_seed(0)
        coarse = torch.rand(args.images, 3, args.size // 16, args.size // 16, generator=generator)
        images = torch.nn.functional.interpolate(coarse, size=(args.size, args.size), mode="bilinear").clamp(0, 1).to(device)
        words = ["a red circle", "two dogs on a beach", "a city at sunset", "a blue car next to a tree"]
        prompts = [words[i % len(words)] for i in range(args.images)]

        def run_reference():
            out = []
            for start in range(0, args.images, args.batch_size):
                out.append(reference_scores(model, processor, images[start : start + args.batch_size], prompts[start : start + args.batch_size], device))
            return torch.cat(out)

        def run_ours():
            return ours(images, prompts)

        with torch.no_grad():
            ref, mine = run_reference(), run_ours()  # warm-up, and agreement check
            gap = (ref - mine).abs().max().item()
            t_ref = timed(run_reference, args.repeats, device)
            t_ours = timed(run_ours, args.repeats, device)

    ref_ips = args.images / statistics.median(t_ref)
    our_ips = args.images / statistics.median(t_ours)
    print(f"device={device} images={args.images} size={args.size} batch={args.batch_size} model={args.model or f'random CLIP width {args.width}, {args.layers} layers, 224px'}")
    print(f"reference (CLIPProcessor on uint8 + CLIPModel): {ref_ips:8.1f} images/s")
    print(f"diffalign clip scorer (tensor preprocessing):  {our_ips:8.1f} images/s")
    print(f"speed ratio diffalign / reference: {our_ips / ref_ips:.2f}x   max |score difference| = {gap:.3f} (100·cos units)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
