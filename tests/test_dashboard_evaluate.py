"""The Evaluate page under Streamlit's AppTest: a run on generated digits, its charts and table, continue."""

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from explainers import cli, commands
from explainers.evaluate import KEY_COLUMNS, summary_table
from explainers.results import read_results
from explainers.statistics import chefer_table
from tests.dashboard_apptest import open_app, plotly_specs, problems
from tests.test_evaluate import tiny_loaded

METHODS = ["rollout", "gae"]


@pytest.fixture
def page() -> AppTest:
    app = open_app()
    app.switch_page("views/evaluate.py").run()
    assert not problems(app)
    app.multiselect(key="ev.methods").set_value(METHODS)
    app.number_input(key="ev.count").set_value(3)
    return app.run()


def test_a_run_scores_every_image_and_method(page: AppTest) -> None:
    run = next(b for b in page.button if b.label == "Run")
    run.click().run()
    assert not problems(page) and not page.error
    rows = page.session_state["ev.rows"]
    assert sorted({(r["image_id"], r["method"]) for r in rows}) == sorted(
        (f"cluttered-s0-{i:05d}", m) for i in range(3) for m in METHODS
    )
    table = page.dataframe[0].value
    assert list(table.index) == METHODS and table.shape[1] >= 10
    assert all(" ± " in cell for cell in table.iloc[0])
    assert len(plotly_specs(page)) == 5  # curves, sanity, bars, agreement, ranking agreement of the metrics
    subheaders = [s.value for s in page.subheader]
    assert "Perturbation curves" in subheaders and "Scores per method" in subheaders
    assert any(h.startswith("Chefer et al. 2021") for h in subheaders)
    assert len(page.get("download_button")) == 1
    assert any(m.value.startswith("**Fail the sanity check:**") for m in page.main.markdown)
    assert not [w.value for w in page.warning if "Stopped" in w.value]


def test_continue_finishes_a_stopped_run_without_repeating_rows(page: AppTest) -> None:
    next(b for b in page.button if b.label == "Run").click().run()
    complete = pd.DataFrame(page.session_state["ev.rows"])
    page.session_state["ev.rows"] = page.session_state["ev.rows"][:2]  # as if Stop came after one image
    page.run()
    assert any("Stopped after 1 of 3 images" in w.value for w in page.warning)
    resume = next(b for b in page.button if b.label == "Continue")
    assert not resume.disabled
    resume.click().run()
    resumed = pd.DataFrame(page.session_state["ev.rows"])
    assert len(resumed) == 6 and not resumed.duplicated(["image_id", "method"]).any()
    key = list(KEY_COLUMNS)
    pd.testing.assert_frame_equal(
        resumed.sort_values(key).reset_index(drop=True), complete.sort_values(key).reset_index(drop=True),
        rtol=1e-5,
    )
    assert next(b for b in page.button if b.label == "Continue").disabled


def test_no_method_chosen_is_explained_not_run(page: AppTest) -> None:
    page.multiselect(key="ev.methods").set_value([]).run()
    assert not problems(page)
    assert any("at least one method" in w.value for w in page.warning)
    assert not [b for b in page.button if b.label == "Run"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_results_file_of_the_command_line_opens_with_the_same_tables_and_charts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    monkeypatch.setattr(commands, "load_model", lambda spec, device, weights: tiny_loaded())
    out = tmp_path / f"results{suffix}"
    assert cli.main(["evaluate", "--images", "cluttered:4", "--out", str(out), "--methods", "rollout,gae",
                     "--metrics", "perturbation,localisation,agreement"]) == 0
    app = open_app()
    app.switch_page("views/evaluate.py").run()
    app.radio(key="ev.mode").set_value("open").run()
    assert not problems(app) and any("Upload a results file" in i.value for i in app.info)
    app.text_input(key="ev.path").input(str(out)).run()
    assert not problems(app) and not app.error
    frame = read_results(out)
    assert any(f"**{len(frame):,} rows**" in m.value for m in app.main.markdown)
    settings, table, chefer, differences = (d.value for d in app.dataframe[:4])
    assert list(settings["method"]) == ["rollout", "gae"]
    pd.testing.assert_frame_equal(table, summary_table(frame))
    pd.testing.assert_frame_equal(chefer.reset_index(drop=True), chefer_table(frame).round(2))
    assert list(differences.columns[:3]) == ["method_a", "method_b", "n"] and differences["n"].iloc[0] == 4
    assert len(plotly_specs(app)) == 4  # curves, bars, agreement, ranking agreement of the metrics
    assert not app.get("download_button")  # the file is there already
    app.selectbox(key="ev.diff").set_value("insertion_auc").run()
    assert not problems(app)
    app.text_input(key="ev.path").input(str(tmp_path / "missing.csv")).run()
    assert any("does not exist" in e.value for e in app.error)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    app.text_input(key="ev.path").input(str(tmp_path / "other.csv")).run()
    assert any("not a results file" in e.value for e in app.error) and not problems(app)
