import json

from privkit.evaluate.report import Report, new_figure


def test_report_writes_json_and_self_contained_escaped_html(tmp_path):
    r = Report("<script>alert(1)</script>", "evaluate")
    r.set_metric("accuracy", 0.9, ci=(0.8, 0.95))
    r.table("t <b>", ["attr", "value"], [["<script>", 1.0]])
    r.text("user said <img src=x onerror=alert(1)>")
    r.verdict("fine & dandy", ok=True)
    fig = new_figure()
    fig.add_subplot(111).plot([0, 1], [1, 0])
    r.figure("plot", fig)
    r.write(tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["accuracy"] == 0.9 and metrics["accuracy_ci"] == [0.8, 0.95]
    html = (tmp_path / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<img src=x" not in html
    assert "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html  # no external assets


def test_non_finite_metrics_become_null(tmp_path):
    r = Report("x", "y")
    r.set_metric("gap", float("nan"))
    r.write(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["gap"] is None
