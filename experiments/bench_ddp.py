"""`backprop-lab bench --data-parallel`: one training step of the medium MLP split across 1 and 2
processes, the hand-written DistributedDataParallel (manual.parallel) against torch's.

Each rank is a fresh spawned process with one thread (torch and BLAS), so W ranks use W cores;
they meet over gloo on 127.0.0.1. The global batch is fixed (strong scaling): each of W ranks
steps on its 1/W shard and the ranks average their gradients. Before timing, both sides take
the same warm-up steps from the same weights and their parameters are compared. Then paired
rounds, as the main bench: every round times a block of steps of each side (the order rotates),
after a barrier; a block's time is the slowest rank's. Communication is measured apart, twice:
the time manual DDP waits on its all_reduce per step (from `comm_stats`), and an all_reduce of
one flat buffer as large as every gradient, alone, with no compute around it.
"""

from __future__ import annotations

import statistics
import time

MODEL = ("64-256-256-10", (64, 256, 256, 10), 256)  # name, sizes, global batch
RANKS = (1, 2)
IMPLS = ("manual-ddp", "torch-ddp")
TIMEOUT_S = 300


def _worker(rank, world, port, sizes, batch, dtype, rounds, n, queue):
    """One rank: build both sides, check they agree, time them; rank 0 puts the figures on the queue."""
    import torch
    import torch.distributed as dist

    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(1)  # one core per rank: NumPy's BLAS ...
        torch.set_num_threads(1)  # ... and torch's
        from manual import _backend as B
        from manual import parallel
        from torch_ref import to_torch, twin, twin_loss, twin_optimizer

        from . import bench

        parallel.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=world, rank=rank,
                                    timeout=60)
        model, crit, opt = bench.build(sizes, dtype)
        tmodel, tcrit = twin(model), twin_loss(crit)
        topt = twin_optimizer(opt, tmodel.parameters())
        ddp = parallel.DistributedDataParallel(model)
        tddp = torch.nn.parallel.DistributedDataParallel(tmodel)
        x, y = bench.data(sizes, batch)
        lo, hi = parallel.shard_bounds(batch, world, rank)
        xm, ym = B.place(x[lo:hi], None, dtype), y[lo:hi]
        xt, yt = to_torch(x[lo:hi], dtype=dtype), torch.as_tensor(y[lo:hi])

        def manual_step():
            opt.zero_grad()
            crit(ddp(xm), ym)
            ddp.backward(crit.backward(), input_grad=False)
            opt.step()

        def torch_step():
            topt.zero_grad()
            tcrit(tddp(xt), yt).backward()
            topt.step()

        steps = {"manual-ddp": manual_step, "torch-ddp": torch_step}
        for step in steps.values():  # the same 3 steps from the same weights on each side
            for _ in range(3):
                step()
        tparams = dict(tmodel.named_parameters())
        agree = max(float(abs(B.to_numpy(p.data) - tparams[k].detach().numpy()).max())
                    for k, p in model.named_parameters())

        def slowest(seconds):  # a data-parallel step lasts as long as its slowest rank
            t = torch.tensor([seconds], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return float(t.item())

        times, waits = {k: [] for k in steps}, []
        for r in range(rounds):
            for k in IMPLS[r % 2:] + IMPLS[:r % 2]:
                dist.barrier()
                c0, t0 = ddp.comm_stats["seconds"], time.perf_counter()
                for _ in range(n):
                    steps[k]()
                times[k].append(slowest((time.perf_counter() - t0) / n))
                if k == "manual-ddp":
                    waits.append(slowest((ddp.comm_stats["seconds"] - c0) / n))
        flat = torch.zeros(sum(p.data.size for p in model.parameters()), dtype=getattr(torch, dtype))
        alone = []
        for _ in range(rounds):  # communication alone: every gradient's bytes in one all_reduce
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(n):
                dist.all_reduce(flat)
            alone.append(slowest((time.perf_counter() - t0) / n))
        figures = {"times": times, "wait": waits, "all_reduce_alone": alone, "agree": agree,
                   "bytes": sum(ddp.bucket_sizes), "buckets": len(ddp.bucket_sizes), "shard": hi - lo}
        tddp = None  # torch's reducer goes before its process group does (torch_step is not called again)
        dist.barrier()  # no rank tears the group down while another still uses it
        if rank == 0:
            queue.put(("ok", figures))
    except BaseException as e:  # named and sent, so the parent reports it instead of waiting out a timeout
        queue.put(("error", f"rank {rank} of {world}: {type(e).__name__}: {e}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run_world(world, sizes, batch, dtype, rounds, n):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fresh interpreters: no threads or BLAS pools inherited
    queue = ctx.Queue()
    from .view import free_port

    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, sizes, batch, dtype, rounds, n, queue), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        status, payload = queue.get(timeout=TIMEOUT_S)
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
    if status != "ok":
        raise RuntimeError(f"bench --data-parallel: {payload}")
    return payload


def measure(dtype="float32", rounds=5, n=20, ranks=RANKS):
    """One row per (ranks, impl): median step ms, speed-up and efficiency against 1 rank, communication."""
    name, sizes, batch = MODEL
    rows, one = [], {}
    for world in ranks:
        r = _run_world(world, sizes, batch, dtype, rounds, n)
        for impl in IMPLS:
            med = statistics.median(r["times"][impl])
            if world == 1:
                one[impl] = med
            base = one.get(impl)
            rows.append({
                "model": name, "global_batch": batch, "shard": r["shard"], "dtype": dtype, "ranks": world,
                "impl": impl, "median_ms": med * 1e3,
                "speedup": None if base is None else base / med,
                "efficiency": None if base is None else base / med / world,
                "all_reduce_wait_ms": statistics.median(r["wait"]) * 1e3 if impl == "manual-ddp" else None,
                "all_reduce_alone_ms": statistics.median(r["all_reduce_alone"]) * 1e3,
                "gradient_bytes": r["bytes"], "buckets": r["buckets"], "warmup_max_abs_diff": r["agree"],
                "rounds": rounds, "steps_per_block": n,
            })
    return rows


def print_rows(rows, print_rows_fn):
    if not rows:
        return
    r0 = rows[0]
    print(f"\ndata parallel: {r0['model']}, global batch {r0['global_batch']} split across the ranks, {r0['dtype']}, "
          f"gloo on 127.0.0.1,\n1 thread per rank ({r0['gradient_bytes'] / 1e6:.2f} MB of gradients in "
          f"{r0['buckets']} bucket(s) per step):")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    lines = [("ranks", "impl", "median ms", "speed-up", "efficiency", "wait ms", "all_reduce ms", "max |m - t|")]
    for r in rows:
        lines.append((str(r["ranks"]), r["impl"], f"{r['median_ms']:.4g}", fmt(r["speedup"], ".2f"),
                      fmt(r["efficiency"], ".0%"), fmt(r["all_reduce_wait_ms"], ".3g"),
                      f"{r['all_reduce_alone_ms']:.3g}", f"{r['warmup_max_abs_diff']:.1e}"))
    print_rows_fn(lines)
    print("speed-up: 1 rank's median step / this one's (same impl); efficiency: speed-up / ranks. wait ms:\n"
          "  per step, manual DDP waiting on its all_reduce (the slowest rank's). all_reduce ms: the\n"
          "  gradients' bytes in one all_reduce, no compute around it. max |m - t|: manual vs torch DDP\n"
          "  parameters after the same 3 warm-up steps. One core per rank: more ranks than cores cannot scale.")
