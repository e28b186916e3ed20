"""The bare scoring loop: Parquet record batches -> numpy -> torch forward -> one ParquetWriter.

The forward is the model's: a nested model rebuilds each row from every prefix of its
code, as aepipe's score does, and the loop writes each prefix's error.

The practical upper bound that `aepipe score` is measured against (benchmarks/score_speed.py):
no schema check, no tracking, no orchestration. Batches are pulled file by file as in
aepipe; a pyarrow.dataset scanner would decode ahead and grow memory with the batch.

    python benchmarks/bare_score.py MODEL_PT NORMALIZER_JSON SOURCE_DIR OUT_PARQUET
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch


def main(model_path: str, normalizer_path: str, source: str, out: str) -> None:
    saved = torch.load(model_path, weights_only=True)
    spec, state = saved["spec"], saved["state_dict"]
    k = spec["k"]
    prefixes = [k, *spec.get("widths", [])]  # a nested model's code is wider than k
    widths = [spec["d"], *spec["hidden"], prefixes[-1]]
    encoder = torch.nn.Sequential()
    decoder = torch.nn.Sequential()
    for layers, sizes in ((encoder, widths), (decoder, widths[::-1])):
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(torch.nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(torch.nn.GELU(approximate=spec.get("gelu", "none")))
    encoder.load_state_dict({n[8:]: v for n, v in state.items() if n.startswith("encoder.")})
    decoder.load_state_dict({n[8:]: v for n, v in state.items() if n.startswith("decoder.")})
    normalizer = json.loads(Path(normalizer_path).read_text())
    columns = normalizer["columns"]
    center, scale = np.asarray(normalizer["center_"]), np.asarray(normalizer["scale_"])
    writer = None
    files = sorted(Path(source).glob("*.parquet"))
    with torch.no_grad():
        for batch in (
            b
            for f in files
            for b in pq.ParquetFile(f, pre_buffer=False).iter_batches(65536, columns=columns)
        ):
            x = np.column_stack([batch.column(c).to_numpy() for c in columns])
            x = torch.from_numpy(((x - center) / scale).astype(np.float32))
            code = encoder(x)
            errors = {}
            for width in prefixes:  # a nested model rebuilds from each prefix of its code
                z = code.clone()
                z[:, width:] = 0
                errors[width] = ((decoder(z) - x) ** 2).mean(dim=1).numpy()
            table = pa.table(
                {
                    **{f"z{i}": code[:, i].numpy() for i in range(k)},
                    "recon_error": errors[k],
                    **{f"recon_error_{w}": errors[w] for w in prefixes[1:]},
                }
            )
            writer = writer or pq.ParquetWriter(out, table.schema, compression="zstd")
            writer.write_table(table)
    writer.close()


if __name__ == "__main__":
    main(*sys.argv[1:5])
