"""Stage ``profile`` (target, no torch): what every piece of the network costs on this device.

    latency_table.profile_engines  EngineSet -> lut.json (every graph and fused stretch, timed in chained frames)
    timing                         warm-up + perf_counter timing, paired timing
    bench.bench_engines            ``mess-edge bench``: per-graph latency / GMACs, chained final-only vs monolithic
    instance_bench                 ``mess-edge bench --instance``: an instance vs final-only on real frames
    commands                       ``mess-edge profile``, ``mess-edge bench``
"""
