from __future__ import annotations

import numpy as np
from kafka.record import default_records, util
from kafka.record._crc32c import crc as pure_python_crc

from monitor import kafka_crc


def test_c_crc32c_matches_kafka_pythons_own() -> None:
    assert kafka_crc.install()
    assert default_records.calc_crc32c.__module__ == "monitor.kafka_crc"
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 64, 4096, 100_000):
        data = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        view = memoryview(data)[size // 3 :]  # kafka-python passes offset memoryviews
        assert default_records.calc_crc32c(view) == pure_python_crc(view)
        assert util.calc_crc32c(view) == pure_python_crc(view)


def test_record_batches_round_trip_with_the_c_crc() -> None:
    kafka_crc.install()
    builder = default_records.DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i in range(10):
        builder.append(i, timestamp=1000 + i, key=b"digits", value=bytes([i]) * 300, headers=[])
    batch = default_records.DefaultRecordBatch(bytes(builder.build()))
    assert batch.validate_crc()
    assert [r.value for r in batch] == [bytes([i]) * 300 for i in range(10)]
