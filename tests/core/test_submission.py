import json

import pytest

from tasks.core.errors import InputError
from tasks.core.submission import read_ground_truth, read_submission, score, write_submission


def names(prefix: str, n: int = 10) -> list[str]:
    return [f"{prefix}{i}.jpg" for i in range(n)]


def write_doc(path, doc) -> str:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


def good_doc() -> dict:
    return {"results": [{"text": f"text {i}", "image_names": names(f"q{i}_")} for i in range(5)]}


def test_round_trip(tmp_path):
    results = [("This is a white Audi Sedan.", names("a")), ("A female pedestrian ...", names("b"))]
    path = write_submission(tmp_path / "out" / "submission.json", results)
    assert read_submission(path) == results
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert list(doc) == ["results"]
    assert doc["results"][0] == {"text": "This is a white Audi Sedan.", "image_names": names("a")}
    assert [p.name for p in path.parent.iterdir()] == ["submission.json"]   # no temporary left behind


def test_write_refuses_wrong_count_and_duplicates(tmp_path):
    with pytest.raises(InputError, match=r"results\[1\]\.image_names.*expected exactly 10"):
        write_submission(tmp_path / "s.json", [("a", names("a")), ("b", names("b", 9))])
    with pytest.raises(InputError, match=r"results\[0\]\.image_names\[3\]"):
        write_submission(tmp_path / "s.json", [("a", names("a", 3) + ["a0.jpg"] + names("z", 6))])
    assert not (tmp_path / "s.json").exists()


def mutate(edit):
    doc = good_doc()
    edit(doc)
    return doc


MALFORMED = [
    ("not an object", [1, 2], r"\(top level\)"),
    ("missing results", {"result": []}, r"'results': missing"),
    ("results not a list", {"results": {"text": "a"}}, r"'results'"),
    ("entry not an object", mutate(lambda d: d["results"].__setitem__(2, "text 2")), r"results\[2\]'"),
    ("missing text", mutate(lambda d: d["results"][3].pop("text")), r"results\[3\]\.text"),
    ("missing names", mutate(lambda d: d["results"][3].pop("image_names")), r"results\[3\]\.image_names"),
    ("text not a string", mutate(lambda d: d["results"][1].__setitem__("text", 7)), r"results\[1\]\.text"),
    ("names not a list", mutate(lambda d: d["results"][1].__setitem__("image_names", "a.jpg")),
     r"results\[1\]\.image_names"),
    ("9 names", mutate(lambda d: d["results"][3]["image_names"].pop()),
     r"results\[3\]\.image_names'.*9 image names.*expected exactly 10"),
    ("11 names", mutate(lambda d: d["results"][4]["image_names"].append("extra.jpg")),
     r"results\[4\]\.image_names'.*11 image names.*expected exactly 10"),
    ("duplicate name", mutate(lambda d: d["results"][2]["image_names"].__setitem__(5, "q2_1.jpg")),
     r"results\[2\]\.image_names\[5\].*repeats image_names\[1\]"),
    ("non-string name", mutate(lambda d: d["results"][0]["image_names"].__setitem__(4, 12)),
     r"results\[0\]\.image_names\[4\].*expected a string"),
    ("empty name", mutate(lambda d: d["results"][0]["image_names"].__setitem__(4, "")),
     r"results\[0\]\.image_names\[4\]"),
]


@pytest.mark.parametrize("label, doc, location", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_read_submission_malformed(tmp_path, label, doc, location):
    path = write_doc(tmp_path / "submission.json", doc)
    with pytest.raises(InputError, match=location) as info:
        read_submission(path)
    assert str(info.value).startswith(path)


def test_read_submission_not_json_reports_line_and_column(tmp_path):
    path = tmp_path / "submission.json"
    path.write_text('{\n  "results": [\n    {"text": "a",,}\n  ]\n}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"submission\.json:3: not valid JSON: .* column 18") as info:
        read_submission(path)
    assert info.value.line == 3


def test_read_submission_non_utf8_and_missing_file(tmp_path):
    path = tmp_path / "submission.json"
    path.write_bytes(b'{"results": [\n{"text": "caf\xe9"}]}')
    with pytest.raises(InputError, match=r"submission\.json:2: .*UTF-8"):
        read_submission(path)
    with pytest.raises(InputError, match="file not found"):
        read_submission(tmp_path / "absent.json")


def test_read_submission_accepts_bom(tmp_path):
    path = tmp_path / "submission.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(good_doc()).encode())
    assert len(read_submission(path)) == 5


# ---------------------------------------------------------------- ground truth

def test_read_ground_truth_bom_crlf_and_trailing_blank_lines(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_bytes("\ufeffThis is a white Audi Sedan.$a.jpg$b.jpg\r\nA café$c.jpg\r\n\r\n\n".encode("utf-8"))
    assert read_ground_truth(path) == [("This is a white Audi Sedan.", ["a.jpg", "b.jpg"]),
                                       ("A café", ["c.jpg"])]


@pytest.mark.parametrize("content, line, reason", [
    (b"text$a.jpg\n$b.jpg\n", 2, "empty query text"),
    (b"text$a.jpg\n\nother$b.jpg\n", 2, "empty query text"),
    (b"text$a.jpg\nother$b.jpg$$c.jpg\n", 2, "image name 2 is empty"),
    (b"text$a.jpg\nother$b.jpg$\n", 2, "image name 2 is empty"),
    (b"text$a.jpg\nother$$\n", 2, "image name 1 is empty"),
    (b"text$a.jpg\nok$b.jpg\nbad \xff$c.jpg\n", 3, "not valid UTF-8"),
    (b"text$a.jpg$b.jpg$a.jpg\n", 1, "repeats"),
])
def test_read_ground_truth_errors_name_the_line(tmp_path, content, line, reason):
    path = tmp_path / "gt.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=reason) as info:
        read_ground_truth(path)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")


# ---------------------------------------------------------------- scoring

def make_gt(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("q0$r1.jpg$r2.jpg$r3.jpg$r4.jpg$r5.jpg\n"    # R=5
                    "q1$s1.jpg$s2.jpg\n"                          # R=2
                    "q2$t1.jpg\n", encoding="utf-8")              # R=1
    return path


def test_score_by_hand(tmp_path):
    gt = make_gt(tmp_path)
    filler = names("x", 10)
    results = [
        ("q0", ["r3.jpg"] + filler[:9]),                                   # org 1,   trec 1/5
        ("q1", ["x0.jpg", "s2.jpg", "x1.jpg", "s1.jpg"] + filler[2:8]),    # org 0.5, trec (1/2+2/4)/2 = 0.5
        ("q2", filler),                                                    # org 0,   trec 0
    ]
    sub = write_submission(tmp_path / "submission.json", results)
    assert score(sub, gt) == {"map_at_10": 0.5, "trec_ap_at_10": round((0.2 + 0.5) / 3, 6), "queries": 3,
                                "queries_without_relevant": 0}


def test_score_refuses_out_of_order_texts(tmp_path):
    gt = make_gt(tmp_path)
    sub = write_submission(tmp_path / "submission.json",
                           [("q0", names("a")), ("q2", names("b")), ("q1", names("c"))])
    with pytest.raises(InputError, match=r"results\[1\]\.text'?: 'q2' differs from ground truth line 2 'q1'"):
        score(sub, gt)


def test_score_refuses_wrong_number_of_results(tmp_path):
    gt = make_gt(tmp_path)
    sub = write_submission(tmp_path / "submission.json", [("q0", names("a")), ("q1", names("b"))])
    with pytest.raises(InputError, match="2 results but ground truth .* has 3 lines"):
        score(sub, gt)


def test_a_query_with_no_relevant_image_scores_zero_and_is_counted(tmp_path):
    """As the organisers' scorer does: the query stays in the mean with AP 0 (users' own evaluation
    sets have queries with nothing relevant in the gallery)."""
    gt = tmp_path / "gt.txt"
    gt.write_text("q0$r1.jpg\nq1\nq2$\n", encoding="utf-8")
    assert read_ground_truth(gt) == [("q0", ["r1.jpg"]), ("q1", []), ("q2", [])]
    sub = tmp_path / "submission.json"
    write_submission(sub, [("q0", ["r1.jpg"] + [f"x{i}.jpg" for i in range(9)]),
                           ("q1", [f"y{i}.jpg" for i in range(10)]), ("q2", [f"z{i}.jpg" for i in range(10)])])
    result = score(sub, gt)
    assert result == {"map_at_10": round(1 / 3, 6), "trec_ap_at_10": round(1 / 3, 6), "queries": 3,
                      "queries_without_relevant": 2}
