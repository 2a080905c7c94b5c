"""Learned-codec throughput in megapixels/s, encode and decode, against Pillow's JPEG, WebP and AVIF on
the same photograph in one run (the ratios are what to read; absolute MP/s depend on the machine).

    python benchmarks/codec_speed.py RUN                  # a compression run folder
    python benchmarks/codec_speed.py RUN --size 1024 --level 2 --rounds 3 --threads 2

The image is a held-out test photograph (astronaut, 512 x 512) tiled up to ``--size`` x ``--size``.
Each contender encodes it to a file and decodes that file ``--rounds`` times (interleaved); the
median times give megapixels/s, and the file's bits per pixel and the decoded image's PSNR are
printed beside them.  The learned codec runs as ``visionsmith compress`` / ``decompress`` do (float32,
range coding with constriction); the classical codecs run at the quality whose file size is closest
to the learned codec's.  Results: ``benchmarks/results/codec_speed.json``.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import cpu_model, loadavg, write_result  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a compression run folder")
    p.add_argument("--size", type=int, default=1024, help="side of the test image (default 1024)")
    p.add_argument("--level", type=int, default=None, help="rate level (default: the middle one)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from skimage import data as skdata

    from visionsmith.metrics.enhancement import psnr
    from visionsmith.ops.classical_codecs import encode, quality_near
    from visionsmith.workflows.codec import _codec_run
    task, model = _codec_run(args.run, "compress")
    level = model.levels // 2 if args.level is None else args.level
    photo = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1)
    reps = -(-args.size // photo.shape[-1])
    u8 = photo.repeat(1, reps, reps)[:, :args.size, :args.size].contiguous()  # [3, S, S]
    hwc = np.ascontiguousarray(u8.permute(1, 2, 0).numpy())
    mp = args.size * args.size / 1e6

    learned_bytes = len(task.encode(model, u8, level))
    quality = {fmt: quality_near(hwc, fmt, learned_bytes)[0] for fmt in ("jpeg", "webp", "avif")}

    def learned():
        t0 = time.perf_counter()
        data = task.encode(model, u8, level)
        t1 = time.perf_counter()
        dec, _ = task.decode(model, data)
        return t1 - t0, time.perf_counter() - t1, len(data), dec

    def classical(fmt):
        def run():
            t0 = time.perf_counter()
            data = encode(hwc, fmt, quality[fmt])
            t1 = time.perf_counter()
            with Image.open(io.BytesIO(data)) as im:
                dec = np.asarray(im.convert("RGB"))
            return t1 - t0, time.perf_counter() - t1, len(data), torch.from_numpy(dec.copy()).permute(2, 0, 1)
        return run

    contenders = {"learned": learned, **{fmt: classical(fmt) for fmt in quality}}
    times = {k: ([], []) for k in contenders}
    scores: dict[str, dict] = {}
    names = list(contenders)
    print(f"codec_speed: {args.run} ({type(model).__name__}, level {level} of {model.levels}), {args.size} x "
          f"{args.size} ({mp:.2f} MP), {args.threads} threads, {args.rounds} rounds; load average {loadavg()}",
          flush=True)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            enc_s, dec_s, nbytes, dec = contenders[name]()
            times[name][0].append(enc_s)
            times[name][1].append(dec_s)
            if r == 0:
                scores[name] = {"bpp": nbytes * 8 / (args.size * args.size), "psnr": psnr(dec, u8)}
    table = {n: {"encode_mp_per_s": mp / statistics.median(times[n][0]),
                 "decode_mp_per_s": mp / statistics.median(times[n][1]), **scores[n],
                 **({"quality": quality[n]} if n in quality else {})} for n in names}
    print(f"\n  {'codec':<9}{'encode MP/s':>13}{'decode MP/s':>13}{'bpp':>8}{'PSNR dB':>9}")
    for n in names:
        t = table[n]
        print(f"  {n:<9}{t['encode_mp_per_s']:>13.3f}{t['decode_mp_per_s']:>13.3f}{t['bpp']:>8.3f}{t['psnr']:>9.2f}")
    for fmt in quality:
        print(f"  learned / {fmt}: encode {table['learned']['encode_mp_per_s'] / table[fmt]['encode_mp_per_s']:.3f}x, "
              f"decode {table['learned']['decode_mp_per_s'] / table[fmt]['decode_mp_per_s']:.3f}x")
    result = {"run": str(args.run), "model": type(model).__name__, "level": level, "size": args.size,
              "megapixels": mp, "threads": args.threads, "rounds": args.rounds, "cpu": cpu_model(),
              "load_avg_after": loadavg(), "contenders": table}
    return write_result(args.out or Path(__file__).parent / "results" / "codec_speed.json", result)


if __name__ == "__main__":
    main()
