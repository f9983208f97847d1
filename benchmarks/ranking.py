"""Benchmark: exact top-k ranking, ours against the reference solution's approach and FAISS flat search.

N queries x N images, 512-d L2-normalised float32 embeddings (random unit vectors, fixed seed), top-10,
N in {2000, 10000, 20000}:

- **ours**: ``tasks.core.topk.top_k`` (backend torch): matrix product per 1024 x 8192 block into one
  buffer, running top-k with a threshold test per group of 64 columns (see tasks/core/topk.py);
- **ours, faiss backend**: ``top_k(..., backend="faiss")``: FAISS search, our ordering and tie rule;
- **FAISS IndexFlatIP**: ``index.add(gallery); index.search(queries, k)`` (faiss-cpu, same threads);
- **torch.mm alone**: the same N x N x 512 product in the same blocks with no selection: the speed
  the search is built on. Ours as a fraction of it is printed as "of mm";
- **reference**: the reference solution's approach, as it did it: ``torch.cosine_similarity`` of each
  batch of queries broadcast against the whole gallery into a full N x N matrix, then a full
  ``torch.argsort`` of every row. It is slow (about 870 s at 20k on a quiet 2-core machine), so above
  ``--reference-full-max`` queries it is timed on the first ``--reference-rows`` queries only and its
  time is EXTRAPOLATED linearly (both of its phases are linear in the number of query rows); the
  output says so on every such line, and its answers are checked on those rows. ``--full-reference``
  runs it whole at every N (about 20 minutes).

Every method runs on the same embeddings, interleaved (one call of each per round, ``--rounds``
rounds at the largest N and proportionally more at smaller ones; the reference once per N). Times are
medians; GFLOP/s (2 N^2 d / time) come from each method's best round, so "of mm" is ours as a fraction
of plain torch.mm's peak on the same blocks. Answers are compared with ours row by row: the same top-10 indices,
or, where scores tie within float error, the same top-10 scores within 1e-5.

Peak extra memory is measured per method and N in a fresh subprocess (benchmarks/_common.py: VmHWM
during a second call minus VmRSS before it; the embeddings are loaded before, so they are not counted).
Ours holds one 1024 x 4096 score block (16 MiB), oneDNN's packed copy of a gallery block and small
merge temporaries; the allocator's arenas make the figure vary by about +-15 MB between runs.
For an extrapolated reference, the memory run makes the reference's allocations in full (the N x N
matrix, one cosine batch, the argsort of all N rows) but fills the rows after the first batch with
torch.mm, which is faster and allocates nothing that the cosine loop would not.

    python benchmarks/ranking.py [--sizes 2000,10000,20000] [--rounds 3] [--full-reference]

Targets (issue 7): >= 250x faster than the reference at 20k; at least as fast as FAISS flat; peak
extra memory independent of N beyond the embeddings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import (  # noqa: E402
    interleaved,
    machine,
    measure_here,
    measure_in_subprocess,
    median,
    report_measurement,
    seconds,
    verdict,
)

from tasks.core import topk  # noqa: E402

METHODS = ("ours", "ours_faiss", "faiss", "product", "matmul", "reference")
LABELS = {"ours": "ours (torch)", "ours_faiss": "ours, faiss backend", "faiss": "FAISS IndexFlatIP",
          "product": "ours' product alone", "matmul": "torch.mm alone", "reference": "reference"}
TIE_TOLERANCE = 1e-5


def embeddings(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return topk.normalise(torch.randn(n, dim, generator=g)), topk.normalise(torch.randn(n, dim, generator=g))


def ours(queries, gallery, k):
    return topk.top_k(queries, gallery, k, backend="torch")


def ours_faiss(queries, gallery, k):
    return topk.top_k(queries, gallery, k, backend="faiss")


def faiss_flat(queries, gallery, k):
    import faiss
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery.numpy())
    values, indices = index.search(queries.numpy(), k)
    return torch.from_numpy(values), torch.from_numpy(indices)


def matmul_only(queries, gallery, k):
    """Plain torch.mm of the same product, in the same blocks, into one buffer, nothing selected."""
    qc, gc = topk.QUERY_CHUNK, topk.GALLERY_CHUNK
    buffer = torch.empty(min(qc, len(queries)) * min(gc, len(gallery)))
    with torch.inference_mode():
        for q0 in range(0, len(queries), qc):
            q_block = queries[q0:q0 + qc]
            for g0 in range(0, len(gallery), gc):
                g_block = gallery[g0:g0 + gc]
                out = buffer[:len(q_block) * len(g_block)].view(len(q_block), len(g_block))
                torch.mm(q_block, g_block.t(), out=out)
    return None


def product_only(queries, gallery, k):
    """The score blocks ours computes (tasks.core.topk: oneDNN on a CPU where it works), nothing selected."""
    with torch.inference_mode():
        for block in topk.iter_blocks(queries, gallery):
            del block           # as ours does: one block alive at a time
    return None


def reference(queries, gallery, k, batch: int = 16, fill_after_first_batch: bool = False):
    """The reference solution: per-batch cosine similarity into a full matrix, then a full argsort.

    ``fill_after_first_batch`` (memory runs only) computes the rows after the first batch with
    torch.mm instead: the same allocations, in a fraction of the time.
    """
    similarity = torch.empty(len(queries), len(gallery))
    for start in range(0, len(queries), batch):
        rows = slice(start, start + batch)
        if fill_after_first_batch and start > 0:
            torch.mm(queries[rows], gallery.t(), out=similarity[rows])
            continue
        similarity[rows] = torch.cosine_similarity(queries[rows, None, :], gallery[None, :, :], dim=-1)
    order = torch.argsort(similarity, dim=1, descending=True)
    top = order[:, :k]
    return similarity.gather(1, top), top


def agreement(values, indices, want_values, want_indices) -> tuple[int, int]:
    """(rows with the same indices, rows with the same answer): the same indices, or the same score
    sets within TIE_TOLERANCE (equal scores may be listed in another order or cut differently)."""
    same_indices = (indices == want_indices).all(dim=1)
    a = torch.sort(values.float(), dim=1, descending=True).values
    b = torch.sort(want_values.float(), dim=1, descending=True).values
    same_scores = ((a - b).abs() <= TIE_TOLERANCE).all(dim=1)
    return int(same_indices.sum()), int((same_indices | same_scores).sum())


def measure(args) -> None:
    """--measure METHOD: one method at one N, peak extra memory, in this (fresh) process."""
    queries, gallery = embeddings(args.n, args.dim, args.seed)
    small_q, small_g = queries[:64].clone(), gallery[:2048].clone()
    method = args.measure
    if method == "reference":
        full = args.n <= args.reference_full_max or args.full_reference
        reference(small_q, small_g, args.k, args.reference_batch)
        result = measure_here(lambda: reference(queries, gallery, args.k, args.reference_batch,
                                                fill_after_first_batch=not full))
        result["reference_filled_with_mm"] = not full
    else:
        fn = {"ours": ours, "ours_faiss": ours_faiss, "faiss": faiss_flat, "product": product_only,
              "matmul": matmul_only}[method]
        fn(queries, gallery, args.k)    # the steady state: kernels compiled, caches made, for these shapes
        result = measure_here(lambda: fn(queries, gallery, args.k))
    report_measurement(result)


def run_size(n: int, args, memory: dict) -> dict:
    queries, gallery = embeddings(n, args.dim, args.seed)
    k = args.k
    flops = 2.0 * n * n * args.dim
    methods = {"ours": lambda: ours(queries, gallery, k), "ours_faiss": lambda: ours_faiss(queries, gallery, k),
               "faiss": lambda: faiss_flat(queries, gallery, k), "product": lambda: product_only(queries, gallery, k),
               "matmul": lambda: matmul_only(queries, gallery, k)}
    rounds = max(args.rounds, round(args.rounds * args.largest / n))
    times, results = interleaved(methods, 1)
    full = args.full_reference or n <= args.reference_full_max
    ref_rows = n if full else min(n, args.reference_rows)
    # the reference once, between the rounds of the others
    ref_times, ref_results = interleaved({"reference": lambda: reference(queries[:ref_rows], gallery, k,
                                                                          args.reference_batch)}, 1)
    more, results = interleaved(methods, max(rounds - 1, 0))
    for name in times:
        times[name] += more.get(name, [])
    ref_seconds = ref_times["reference"][0] * n / ref_rows
    ours_values, ours_indices = results["ours"]
    rows = {}
    for name in methods:
        t = median(times[name])
        rows[name] = {"median": t, "best": min(times[name]), "gflops": flops / min(times[name]) / 1e9,
                      "rounds": len(times[name])}
    mm_gflops = rows["matmul"]["gflops"]
    for name in ("ours", "ours_faiss", "faiss", "product"):
        rows[name]["of_mm"] = rows[name]["gflops"] / mm_gflops
        if name in ("ours_faiss", "faiss"):
            rows[name]["agree"] = agreement(*results[name], ours_values, ours_indices) + (n,)
    ref_values, ref_indices = ref_results["reference"]
    rows["reference"] = {"median": ref_seconds, "best": ref_seconds, "rows": ref_rows, "full": full,
                         "agree": agreement(ref_values, ref_indices, ours_values[:ref_rows],
                                            ours_indices[:ref_rows]) + (ref_rows,)}
    for name in METHODS:
        rows[name]["memory"] = memory.get((name, n))
    return rows


def print_size(n: int, rows: dict, args) -> None:
    print(f"\nN = {n} queries x {n} images, {args.dim}-d, top-{args.k}, {rows['ours']['rounds']} rounds")
    print(f"  {'method':<22} {'median':>10} {'best':>10} {'GFLOP/s':>8} {'of mm':>6} {'peak extra':>11}  same answer")
    for name in METHODS:
        row = rows[name]
        gflops = f"{row['gflops']:8.0f}" if "gflops" in row else " " * 8
        of_mm = f"{row['of_mm']:6.2f}" if "of_mm" in row else " " * 6
        mem = row["memory"]
        mem_text = f"{mem['peak_extra_mb']:8.0f} MB" if mem else "         - "
        agree = row.get("agree")
        agree_text = "-"
        if agree is not None:
            agree_text = f"{agree[1]}/{agree[2]} rows"
            if agree[0] != agree[1]:
                agree_text += f" ({agree[0]} with identical indices)"
        note = ""
        if name == "reference" and not row["full"]:
            note = f"  EXTRAPOLATED from {row['rows']} of {n} queries"
        if name == "reference" and mem and mem.get("reference_filled_with_mm"):
            mem_text += "*"
        print(f"  {LABELS[name]:<22} {seconds(row['median']):>10} {seconds(row['best']):>10} {gflops} {of_mm} "
              f"{mem_text:>11}  {agree_text}{note}")
    ratio_ref = rows["reference"]["median"] / rows["ours"]["median"]
    ratio_faiss = rows["faiss"]["median"] / rows["ours"]["median"]
    print(f"  ratios at N = {n}: reference / ours = {ratio_ref:.0f}x, FAISS flat / ours = {ratio_faiss:.2f}x "
          f"(best rounds: "
          f"{rows['faiss']['best'] / rows['ours']['best']:.2f}x); ours reaches {rows['ours']['gflops']:.0f} GFLOP/s = "
          f"{rows['ours']['of_mm']:.2f} of plain torch.mm's peak and "
          f"{rows['ours']['gflops'] / rows['product']['gflops']:.2f} of its own product's")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000,10000,20000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of ours, FAISS and torch.mm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-batch", type=int, default=16, help="queries per cosine_similarity call")
    parser.add_argument("--reference-full-max", type=int, default=2000,
                        help="run the reference whole up to this N; above it, time it on --reference-rows queries")
    parser.add_argument("--reference-rows", type=int, default=1024)
    parser.add_argument("--full-reference", action="store_true", help="run the reference whole at every N (slow)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--measure", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        measure(args)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    args.largest = max(sizes)
    print(f"machine: {machine()}")
    print(f"embeddings: random unit vectors (seed {args.seed}); ours: query_chunk {topk.QUERY_CHUNK}, "
          f"gallery_chunk {topk.GALLERY_CHUNK}, product by {'oneDNN' if topk._onednn() else 'torch.mm'}; "
          f"reference batch {args.reference_batch}")
    print("GFLOP/s: 2 N^2 d over a method's best round; 'of mm': that as a fraction of plain torch.mm's best on "
          "the same blocks (its peak here); times and ratios: medians")
    warm_q, warm_g = embeddings(2048, args.dim, args.seed + 1)
    for fn in (ours, ours_faiss, faiss_flat, product_only, matmul_only, reference):   # imports, first calls
        fn(warm_q[:256], warm_g, args.k)
    memory: dict = {}
    if not args.no_memory:
        script = Path(__file__).resolve()
        common = ["--dim", str(args.dim), "--k", str(args.k), "--seed", str(args.seed),
                  "--reference-batch", str(args.reference_batch), "--reference-full-max", str(args.reference_full_max)]
        common += ["--threads", str(args.threads)] if args.threads else []
        common += ["--full-reference"] if args.full_reference else []
        for n in sizes:
            for name in METHODS:
                memory[(name, n)] = measure_in_subprocess(script, ["--measure", name, "--n", str(n), *common])
    all_rows = {}
    for n in sizes:
        all_rows[n] = run_size(n, args, memory)
        print_size(n, all_rows[n], args)
    if any((m or {}).get("reference_filled_with_mm") for m in memory.values()):
        print("\n* reference peak memory measured with its full allocations (N x N matrix, one cosine batch, "
              "argsort of all rows); rows after the first batch filled by torch.mm to save time")

    largest = max(sizes)
    top = all_rows[largest]
    ratio_ref = top["reference"]["median"] / top["ours"]["median"]
    agree_all = all(rows[name]["agree"][1] == rows[name]["agree"][2]
                    for rows in all_rows.values() for name in ("ours_faiss", "faiss", "reference"))
    faster = {n: rows["faiss"]["median"] / rows["ours"]["median"] for n, rows in all_rows.items()}
    print(f"\ntargets (N = {largest} unless said):")
    print(f"  >= 250x faster than the reference: {ratio_ref:.0f}x"
          f"{' (reference extrapolated)' if not top['reference']['full'] else ''}: {verdict(ratio_ref >= 250)}")
    print("  at least as fast as FAISS flat: " + ", ".join(f"{n}: {r:.2f}x" for n, r in faster.items())
          + f": {verdict(all(r >= 1.0 for r in faster.values()))}")
    if memory:
        # One score block, oneDNN's packed copy of a gallery block and the merge's temporaries, plus
        # allocator slack: a fixed bound, whatever N is (the returned lists, N x k, come on top).
        block_mb = topk.QUERY_CHUNK * topk.GALLERY_CHUNK * 4 / 2 ** 20
        peaks = {n: memory[("ours", n)]["peak_extra_mb"] for n in sizes}
        outputs = {n: n * args.k * 12 / 2 ** 20 for n in sizes}
        bounded = all(peaks[n] <= 4 * block_mb + outputs[n] for n in sizes)
        largest, before = sizes[-1], sizes[-2] if len(sizes) > 1 else sizes[-1]
        flat = peaks[largest] <= 1.25 * peaks[before] + 8
        print("  peak extra memory independent of N: ours " + ", ".join(f"{n}: {p:.0f} MB" for n, p in peaks.items())
              + f" (bound: 4 score blocks = {4 * block_mb:.0f} MB + the returned lists; {largest} within 25% + 8 MB "
              f"of {before}): {verdict(bounded and flat)}")
    print(f"  same answers as ours (all methods, all N): {'yes' if agree_all else 'NO'}")
    return 0 if agree_all else 1


if __name__ == "__main__":
    sys.exit(main())
