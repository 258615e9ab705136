"""Controls built from ``Param`` declarations, for every kind of declaration (not only today's methods)."""

from streamlit.testing.v1 import AppTest


def controls_script() -> None:
    import streamlit as st

    from dashboard.widgets import param_control
    from explainers import Param

    declared = (
        Param("scale", float, 1.5, "Unbounded above.", low=0.0),
        Param("ratio", float, 0.995, "Below one.", low=0.0, high=1.0, high_exclusive=True),
        Param("layer", int, -1, "A layer.", low=0, high="num_layers", negative_index=True),
        Param("only", int, 0, "A one-layer model has one choice.", low=0, high="num_heads"),
        Param("head", int, None, "A head, or none.", low=0, high="num_heads", optional=True),
        Param("fusion", str, "max", "How to fuse.", choices=("mean", "max")),
    )
    dims = {"num_layers": 6, "num_heads": 1}
    st.session_state["values"] = {p.name: param_control(p, p.default, dims, key=p.name) for p in declared}


def test_every_kind_of_parameter_gets_a_control():
    app = AppTest.from_function(controls_script, default_timeout=30).run()
    assert not app.exception
    assert app.number_input(key="scale").value == 1.5
    assert app.slider(key="ratio").value == 0.99 and app.slider(key="ratio").max == 0.99  # 1 itself excluded
    assert app.slider(key="layer").value == 5 and app.slider(key="layer").max == 5  # -1 shown as the last
    assert "only possible value" in app.caption[0].value
    assert app.selectbox(key="head").options == ["none", "0"]
    assert app.selectbox(key="fusion").value == "max"
    assert app.session_state["values"] == {"scale": 1.5, "ratio": 0.99, "layer": 5, "only": 0, "head": None,
                                           "fusion": "max"}
    app.slider(key="layer").set_value(2).run()
    assert app.session_state["values"]["layer"] == 2
