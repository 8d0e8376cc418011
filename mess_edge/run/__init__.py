"""Stage ``run`` (target, no torch): an instance on a camera, a file or a stream.

    chain.Chain                    the early-exit executor over an EngineSet (backends in chain_backends)
    capture                        sources and the capture thread (newest frame wins for live sources)
    preprocess.Preprocessor        BGR frame -> network input, in buffers allocated once
    overlay.Overlay / sink         the overlaid frame / where it is written
    present.Presenter              overlay, window and writer on their own thread
    loop.run_stream / stats        the loop / its statistics
    commands                       ``mess-edge run``
"""
