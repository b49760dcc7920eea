"""A C implementation of CRC32C for kafka-python, from the Apache-2.0 ``google-crc32c`` package.

kafka-python checks (consumer) and computes (producer) a CRC32C over every record batch. Unless
the LGPL ``crc32c`` package is installed it does so in pure Python at ~80 ns a byte, which the
monitor benchmark showed to be the worker's bottleneck (a bare consumer: 18k records/s with
it, 53k without). ``google-crc32c`` computes the same checksum in C (hardware CRC where the CPU
has it). :func:`install` points kafka-python at it; it is a no-op when kafka-python already has a
C implementation or when ``google-crc32c`` is missing.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
_installed = False


def install() -> bool:
    """Make kafka-python use a C CRC32C; returns whether a C implementation is now in use."""
    global _installed
    if _installed:
        return True
    from kafka.record import default_records, util

    if util.crc32c_c is not None:  # kafka-python found the `crc32c` package itself
        _installed = True
        return True
    try:
        import google_crc32c
    except ImportError:
        log.warning(
            "kafka-python will check record CRCs in pure Python (slow); "
            "install google-crc32c (pip install 'repwatch[monitor]') for a C implementation"
        )
        return False
    value = google_crc32c.value

    def calc_crc32c(memview: memoryview) -> int:
        return int(value(bytes(memview)))  # google-crc32c wants read-only bytes

    # default_records imported the function by name, so patch both places.
    util.calc_crc32c = calc_crc32c
    default_records.calc_crc32c = calc_crc32c
    _installed = True
    return True
