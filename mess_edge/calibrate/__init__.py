"""Stage ``calibrate`` (host, torch): prediction memoisation over the calibration split -> memo.npz.

    memoise.memoise                every head's confusion matrices and confidence statistics per image
    commands                       ``mess-edge calibrate``
"""
