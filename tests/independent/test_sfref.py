"""sfref's aligned windows on hand-worked cases (no broker): the reference the window-processor
is checked against must itself say what the definition says."""

from sfref import INT64_MAX, INT64_MIN, aggregate, aligned_outcomes, windows_of


def test_windows_holding_a_reading_are_epoch_aligned():
    assert windows_of(0, "Tumbling", 60_000, None) == [(0, 60_000)]
    assert windows_of(-1, "Tumbling", 60_000, None) == [(-60_000, 0)]
    assert windows_of(59_999, "Hopping", 60_000, 20_000) == [(0, 60_000), (20_000, 80_000), (40_000, 100_000)]
    assert windows_of(60_000, "Hopping", 60_000, 20_000) == [(20_000, 80_000), (40_000, 100_000), (60_000, 120_000)]
    # size not a multiple of the advance: 3 or 2 windows
    assert len(windows_of(0, "Hopping", 50_000, 20_000)) == 3
    assert len(windows_of(15_000, "Hopping", 50_000, 20_000)) == 2
    assert windows_of(5, "Global", 0, None) == [(INT64_MIN, INT64_MAX)]


def test_aggregates_are_exact():
    w = [(0, 0.1), (1_000, 0.2), (3_000, 0.3)]
    assert [aggregate(a, w) for a in ("Count", "Sum", "Min", "Max")] == [3.0, 0.6, 0.1, 0.3]  # 0.1+0.2+0.3 is 0.6000000000000001 in doubles
    assert aggregate("Integral", w) == (0.3 * 1 + 0.5 * 2) / 2
    assert aggregate("Derivative", w) == (0.3 - 0.1) / 3.0
    assert [aggregate(a, [(7, 2.5)]) for a in ("Mean", "Integral", "Derivative")] == [2.5, 0.0, 0.0]


def test_final_emission_closes_at_watermark_reaching_the_end():
    # tumbling 10 s, grace 2 s, partition scope; clients a and b on partition 0
    recs = [(0, 0, "b", 1_000, 1.0), (0, 1, "a", 9_000, 2.0), (0, 2, "a", 11_999, 3.0),
            (0, 3, "b", 9_999, 4.0), (0, 4, "a", 12_000, 5.0), (0, 5, "b", 9_999, 6.0)]
    out = aligned_outcomes(recs, "Tumbling", 10_000, emit="Final", grace_ms=2_000)
    assert [out[(0, i)] for i in range(4)] == [[], [], [], []]  # watermark 9_999 < 10_000; b at 9_999 is not late
    # t=12_000: watermark 10_000 >= end 10_000 closes [0, 10 s) of both clients, in (e, s, client) order
    assert [(e["client"], e["start"], e["end"], e["time"], e["window"]) for e in out[(0, 4)]] == [
        ("a", 0, 10_000, 9_999, [(9_000, 2.0)]),
        ("b", 0, 10_000, 9_999, [(1_000, 1.0), (9_999, 4.0)])]
    assert out[(0, 5)] == "late"


def test_per_record_and_client_scope():
    recs = [(0, 0, "a", 50_000, 1.0), (0, 1, "b", 1_000, 2.0), (0, 2, "a", 45_000, 3.0), (0, 3, "a", 10_000, 4.0)]
    # client scope: b's old reading is not late behind a's clock; a's 45 s is within a 5 s grace
    out = aligned_outcomes(recs, "Hopping", 20_000, 10_000, grace_ms=5_000, scope="client")
    assert [(e["start"], e["time"], e["count"]) for e in out[(0, 2)]] == [(30_000, 45_000, 1), (40_000, 50_000, 2)]
    assert out[(0, 3)] == "late"
    assert aligned_outcomes(recs, "Tumbling", 20_000, grace_ms=5_000)[(0, 1)] == "late"  # partition scope
    g = aligned_outcomes(recs, "Global", 0, grace_ms=10_000, scope="client")
    assert [e["count"] for i in range(3) for e in g[(0, i)]] == [1, 1, 2] and g[(0, 3)] == "late"
