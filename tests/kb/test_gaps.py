from kb.gaps import find_gaps


def test_groups_similar_questions_most_frequent_first() -> None:
    rows = [
        ("How do I export my data to CSV?", "no_match"),
        ("export data to csv", "no_match"),
        ("Export my data as CSV please", "not_helped"),
        ("printer is jammed", "no_match"),
        ("the printer is jammed!", "no_match"),
        ("what is the meaning of life", "no_match"),
    ]
    gaps = find_gaps(rows)
    assert [g.count for g in gaps] == [3, 2]  # the singleton is below min_count
    assert gaps[0].reasons == {"no_match": 2, "not_helped": 1}
    assert "csv" in gaps[0].representative.lower()
    assert len(set(gaps[0].examples)) == 3
    assert "printer" in gaps[1].representative


def test_min_count_and_russian() -> None:
    rows = [("не работает принтер", "no_match"), ("Принтер не работает!", "no_match")]
    assert find_gaps(rows, min_count=3) == []
    (g,) = find_gaps(rows)
    assert g.count == 2


def test_empty() -> None:
    assert find_gaps([]) == []
