"""Time reading a wide markers table (default 2,000 individuals x 50,000 markers).

python benchmarks/read_markers.py [--individuals N] [--markers M]
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from gperceiver.data import Genotypes, MarkerMap, allele_decoder
from gperceiver.io import read_chroms, read_markers, write_chroms, write_markers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--individuals", type=int, default=2000)
    parser.add_argument("--markers", type=int, default=50_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, m = args.individuals, args.markers
    markers, _ = MarkerMap.from_columns(
        np.repeat(["chr1", "chr2"], [m // 2, m - m // 2]),
        [f"m{i}" for i in range(m)],
        np.arange(m, dtype=float),
    )
    codes = rng.integers(0, 6, size=(n, m), dtype=np.uint8)
    genotypes = Genotypes(
        allele_decoder(2, 2)[codes], np.array([f"i{i}" for i in range(n)]), markers, 2
    )
    with tempfile.TemporaryDirectory() as tmp:
        chroms_path, markers_path = Path(tmp, "chroms.tsv"), Path(tmp, "markers.tsv")
        t0 = time.perf_counter()
        write_chroms(markers, chroms_path)
        write_markers(genotypes, markers_path)
        t1 = time.perf_counter()
        read = read_markers(markers_path, read_chroms(chroms_path))
        t2 = time.perf_counter()
        assert (read.alleles == genotypes.alleles).all()
        size = markers_path.stat().st_size / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        f"{n} x {m} markers table ({size:.0f} MB): write {t1 - t0:.1f} s, "
        f"read {t2 - t1:.1f} s, peak RSS {peak:.2f} GB"
    )


if __name__ == "__main__":
    main()
