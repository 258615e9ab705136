"""The sidebar shared by every page: model, device, image, target class and display options.

:func:`render` resolves them into the :class:`~dashboard.state.Scene` of this run. Anything that cannot
be loaded (a model, weights, an image from a link) is reported and replaced by the default, so the
session always goes on.
"""

from __future__ import annotations

import random
from dataclasses import replace

import streamlit as st

from dashboard import state, widgets
from dashboard.state import Scene
from explainers.images import EXTENSIONS
from explainers.models import EMBEDDED, available_devices

#: Size limits of uploads (MB): images are also capped in pixels by ``explainers.images``.
IMAGE_UPLOAD_MB, WEIGHTS_UPLOAD_MB = 25, 400


def render() -> Scene:
    """Draw the sidebar and return the scene it selects (also kept as :func:`state.scene`)."""
    with st.sidebar:
        st.title("ViT explainers")
        model = _model_section()
        image = _image_section(model)
        scene = _target_section(model, image) if state.has_head(model) else _reference_section(model, image)
        _display_section()
    return scene


def _fall_back(message: str, **defaults: object) -> None:
    """Report a problem, return to the default for what failed, and rerun with it."""
    state.notify(message, "error")
    state.commit(replace(state.view(), **defaults))
    st.rerun()


def _model_section() -> state.LoadedModel:
    view = state.view()
    st.subheader("Model")
    spec = _model_picker(view.model)
    with st.expander("Weights file", expanded=view.weights is not None):
        weights = widgets.controlled(
            st.text_input, "w.weights", view.weights or "", label="Path on the server",
            placeholder="path/to/weights.safetensors",
            help="A .safetensors, .pth or .pt state dict of this architecture; empty: its own weights.",
        ).strip() or None
        st.file_uploader("…or upload one", type=["safetensors", "pth", "pt"], key="w.weights_upload",
                         max_upload_size=WEIGHTS_UPLOAD_MB, on_change=_on_weights_upload)
    devices = available_devices()
    if view.device not in devices:
        state.notify(f"Device {view.device!r} is not available on this server ({', '.join(devices)}); "
                     "using the CPU.")
        view = replace(view, device="cpu")
    device = widgets.controlled(st.selectbox, "w.device", view.device, label="Device", options=devices)
    state.commit(replace(view, model=spec, weights=weights, device=device))
    try:
        with st.spinner(f"Loading {spec} on {device}…"):
            model = state.get_model(spec, device, weights)
            state.describe(model)  # the explainers' own check: a model they cannot read is refused here
    except ValueError as error:
        if (spec, weights, device) == (EMBEDDED, None, "cpu"):
            st.error(f"The embedded model cannot be loaded: {error}")
            st.stop()
        _fall_back(f"{error} Showing the embedded model instead.", model=EMBEDDED, weights=None, device="cpu")
    _model_facts(model)
    return model


def _model_picker(current: str) -> str:
    """Searchable: the embedded model and every timm name the compatibility table supports (with its
    readout); any other timm name or ``hf:<folder or hub id>`` can be typed in."""
    supported = state.supported_timm_models()
    options = [EMBEDDED, *supported, *([current] if current != EMBEDDED and current not in supported else [])]
    return widgets.controlled(
        st.selectbox, "w.model", current, label="Architecture", options=options, accept_new_options=True,
        format_func=lambda name: f"{name} · {supported[name]}" if name in supported else name,
        help="The embedded digit model, a timm ViT (type to search: every name listed passes the "
        "compatibility check, readout shown), or a Hugging Face classifier as hf:<folder> (made by "
        "save_pretrained) or hf:<hub id>. Without a weights file, timm models need their pretrained "
        "weights (from the hub or its cache).",
    )


def _model_facts(model: state.LoadedModel) -> None:
    """What the explainers read from the model: readout, prefix tokens, grid; classes and input size."""
    described = state.describe(model)
    classes = f" · {len(model.class_names)} classes" if described.has_head else ""
    height, width = model.data_config["input_size"][1:]
    st.caption(f"Readout: {described.summary}{classes} · input {height}×{width} px",
               help="Readout: the tokens the model's output reads (class token, average pool or attention "
               "pool); the maps start from it. Prefix tokens (class, distillation, registers) are not "
               "patches.")


def _on_weights_upload() -> None:
    upload = st.session_state.get("w.weights_upload")
    if upload is None:
        return
    try:
        path = state.store_weights(upload.getvalue(), upload.name)
    except ValueError as error:
        state.notify(str(error), "error")
        return
    state.commit(replace(state.view(), weights=path))


def _image_section(model: state.LoadedModel) -> state.ImageRecord:
    view = state.view()
    st.subheader("Image")
    ref = view.image or state.default_image()
    gallery = [f"gallery:{item_id}" for item_id in state.gallery()]
    options = gallery + ([ref] if ref not in gallery else [])
    ref = widgets.controlled(st.selectbox, "w.image", ref, label="Image", options=options,
                             format_func=_describe)
    state.commit(replace(view, image=ref))
    try:
        record = state.get_image(ref)
    except ValueError as error:
        _fall_back(f"{error} Showing the first gallery image instead.", image=None)
    if model.spec == EMBEDDED:
        st.button("New random cluttered digit", key="w.random_digit", on_click=_random_digit,
                  icon=":material/casino:", width="stretch")
    st.file_uploader("Upload an image", type=list(EXTENSIONS), key="w.upload",
                     max_upload_size=IMAGE_UPLOAD_MB, on_change=_on_image_upload,
                     help="PNG, JPEG, WebP or BMP, up to 40 megapixels.")
    with st.expander("Gallery"):
        thumbnails = state.gallery_thumbnails()
        st.image(list(thumbnails.values()), caption=list(thumbnails), width=56)
    return record


def _describe(ref: str) -> str:
    kind, value = state.parse_image_ref(ref)
    if kind == "gallery":
        item = state.gallery().get(value)
        return f"{value} · digit {item.label}" if item is not None and item.label is not None else value
    return f"random digit, seed {value}" if kind == "digit" else f"uploaded image {value}"


def _random_digit() -> None:
    state.commit(replace(state.view(), image=f"digit:{random.randrange(1_000_000)}", target=None))


def _on_image_upload(key: str = "w.upload", field: str = "image") -> None:
    """Keep the upload of widget ``key`` and make it the view's ``field`` (the image, or the reference)."""
    upload = st.session_state.get(key)
    if upload is None:
        return
    try:
        ref = state.store_upload(upload.getvalue())
    except ValueError as error:
        state.notify(f"{upload.name}: {error}", "error")
        return
    state.commit(replace(state.view(), **{field: ref}, target=None))


def _validated_view(model: state.LoadedModel) -> state.ViewState:
    """The view with every value checked against the model (each dropped value reported)."""
    view, problems = state.view().validated(state.dims_of(model))
    for problem in problems:
        state.notify(problem)
    state.commit(view)
    return view


def _target_section(model: state.LoadedModel, image: state.ImageRecord) -> Scene:
    view = _validated_view(model)
    with st.spinner("Running the model…"):
        analysis = state.analyse(model, image, view.target)
    scene = Scene(model, image, analysis)
    st.subheader("Target class")
    top = scene.top(5)
    others = sorted(set(range(len(model.class_names))) - {c for c, _ in top})
    probability = dict(top)
    chosen = widgets.controlled(
        st.selectbox, "w.target", scene.target, label="Explain the class",
        options=[c for c, _ in top] + others,
        format_func=lambda c: f"{model.class_names[c]} · {probability[c]:.1%}" if c in probability
        else model.class_names[c],
        help="The five most probable classes first; type to find any class by name.",
    )
    target = None if chosen == top[0][0] else chosen
    if target != view.target:
        state.commit(replace(view, target=target))
        with st.spinner("Running the model…"):
            scene = Scene(model, image, state.analyse(model, image, target))
    state.set_scene(scene)
    st.caption(", ".join(f"{model.class_names[c]} {p:.0%}" for c, p in top[:3]))
    return scene


def _reference_section(model: state.LoadedModel, image: state.ImageRecord) -> Scene:
    """Headless models: the reference image whose similarity the gradient methods explain."""
    view = _validated_view(model)
    st.subheader("Reference image")
    gallery = [f"gallery:{item_id}" for item_id in state.gallery()]
    extra = [view.reference] if view.reference and view.reference not in gallery else []
    options = [None, *gallery, *extra]
    ref = widgets.controlled(
        st.selectbox, "w.reference", view.reference, label="Explain the similarity to", options=options,
        format_func=lambda r: "none: attention only" if r is None else _describe(r),
        help="This model has no classifier. The gradient methods explain the cosine similarity of the "
        "image's embedding to this image's; rollout and raw attention need no reference.",
    )
    st.button("Random digit as reference", key="w.reference_digit", on_click=_random_reference,
              icon=":material/casino:", width="stretch")
    st.file_uploader("Upload a reference", type=list(EXTENSIONS), key="w.reference_upload",
                     max_upload_size=IMAGE_UPLOAD_MB, on_change=_on_image_upload,
                     kwargs={"key": "w.reference_upload", "field": "reference"})
    state.commit(replace(view, reference=ref))
    try:
        reference = None if ref is None else state.get_image(ref)
    except ValueError as error:
        _fall_back(f"{error} No reference image is used.", reference=None)
    with st.spinner("Running the model…"):
        scene = Scene(model, image, state.analyse(model, image, None, reference), reference)
    state.set_scene(scene)
    if scene.analysis.similarity is not None:
        st.caption(f"Cosine similarity of the embeddings: {scene.analysis.similarity:.3f}")
    return scene


def _random_reference() -> None:
    state.commit(replace(state.view(), reference=f"digit:{random.randrange(1_000_000)}"))


def _display_section() -> None:
    st.subheader("Display")
    widgets.option_control("opacity")
    widgets.option_control("colormap")
