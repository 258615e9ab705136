"""The sidebar shared by every page: model, device, image, target class, a second model and display options.

:func:`render` resolves them into the :class:`~dashboard.state.Scene` of this run (and the second model's,
:func:`state.second_scene`). Anything that cannot be loaded (a model, weights, an image from a link) is
reported and replaced by the default, so the session always goes on.
"""

from __future__ import annotations

import random
from dataclasses import replace

import streamlit as st

from dashboard import state, widgets
from dashboard.state import ModelSlot, Scene
from explainers.images import EXTENSIONS
from explainers.models import EMBEDDED, available_devices

#: Widget key prefix of each model slot.
SLOT_KEYS = ("w", "w2")


def render() -> Scene:
    """Draw the sidebar; return the scene (model, image, analysis) to show."""
    with st.sidebar:
        st.title("ViT explainers")
        model = _model_section()
        image = _image_section(model)
        scene = _target_section(model, image) if state.has_head(model) else _reference_section(model, image)
        second = _second_model_section(scene)
        state.set_scene(scene, second)
        _display_section()
    return scene


def _fall_back(message: str, **defaults: object) -> None:
    """Report a problem, return to the default for what failed, and rerun with it."""
    state.notify(message, "error")
    state.commit(replace(state.view(), **defaults))
    st.rerun()


def _slot_controls(index: int, slot: ModelSlot) -> ModelSlot:
    """Architecture, weights file and device of model slot ``index``; the view follows them."""
    prefix = SLOT_KEYS[index]
    spec = _model_picker(f"{prefix}.model", slot.model)
    with st.expander("Weights file", expanded=slot.weights is not None):
        weights = widgets.controlled(
            st.text_input, f"{prefix}.weights", slot.weights or "", label="File in the data folder",
            placeholder="weights/my-model.safetensors",
            help="A .safetensors, .pth or .pt state dict of this architecture, in the server's data folder "
            "(uploads, and files the operator puts in its weights/ folder); empty: its own weights.",
        ).strip() or None
        st.file_uploader("…or upload one", type=["safetensors", "pth", "pt"], key=f"{prefix}.weights_upload",
                         max_upload_size=state.MAX_UPLOAD_MB, on_change=_on_weights_upload, args=(index,))
    devices = available_devices()
    device = slot.device
    if device not in devices:
        state.notify(f"Device {device!r} is not available on this server ({', '.join(devices)}); "
                     "using the CPU.")
        device = "cpu"
    device = widgets.controlled(st.selectbox, f"{prefix}.device", device, label="Device", options=devices)
    slot = ModelSlot(spec, weights, device)
    state.commit(state.view().with_slot(index, slot))
    return slot


def _load(slot: ModelSlot) -> state.LoadedModel:
    """The slot's model, refused here (``ValueError``) when the explainers cannot read it."""
    with st.spinner(f"Loading {slot.model} on {slot.device}…"):
        model = state.load_slot(slot)
        state.describe(model)  # the explainers' own check: a model they cannot read is refused here
    return model


def _model_section() -> state.LoadedModel:
    st.subheader("Model")
    slot = _slot_controls(0, state.view().first)
    try:
        model = _load(slot)
    except ValueError as error:
        if slot == ModelSlot():
            st.error(f"The embedded model cannot be loaded: {error}")
            st.stop()
        _fall_back(f"{error} Showing the embedded model instead.", model=EMBEDDED, weights=None, device="cpu")
    _model_facts(model)
    return model


def _model_picker(key: str, current: str) -> str:
    """Searchable: the embedded model and every timm name the compatibility table supports (with its
    readout); any other timm name or ``hf:<folder or hub id>`` can be typed in."""
    supported = state.supported_timm_models()
    options = [EMBEDDED, *supported, *([current] if current != EMBEDDED and current not in supported else [])]
    return widgets.controlled(
        st.selectbox, key, current, label="Architecture", options=options, accept_new_options=True,
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


def _on_weights_upload(index: int) -> None:
    upload = st.session_state.get(f"{SLOT_KEYS[index]}.weights_upload")
    if upload is None:
        return
    try:
        path = state.store_weights(upload.getvalue(), upload.name)
    except ValueError as error:
        state.notify(str(error), "error")
        return
    view = state.view()
    slot = view.first if index == 0 else view.second or ModelSlot()
    state.commit(view.with_slot(index, replace(slot, weights=path)))


def _second_model_section(first: Scene) -> Scene | None:
    """The second model slot: off, or a model explaining the same image (and class, by name) as the first."""
    st.subheader("Second model")
    view = state.view()
    on = widgets.controlled(st.toggle, "w2.on", view.second is not None, label="Compare with a second model",
                            help="Show every map of both models side by side (Compare) and overlay their "
                            "attention statistics (Attention distributions).")
    if not on:
        state.commit(view.with_slot(1, None))
        return None
    slot = _slot_controls(1, view.second or view.first)
    try:
        model = _load(slot)
    except ValueError as error:
        _fall_back(f"{error} The second model is closed.", second=None)
    _model_facts(model)
    if not state.has_head(model):  # a headless second model explains the similarity to the same reference
        with st.spinner("Running the second model…"):
            analysis = state.analyse(model, first.image, None, first.reference)
        second = Scene(model, first.image, analysis, first.reference)
        if analysis.similarity is None:
            st.caption("It has no classifier: choose a reference image for the first model to explain the "
                       "similarity to it; its attention is shown without one.")
        else:
            st.caption(f"It has no classifier: it explains the cosine similarity to the reference image "
                       f"({analysis.similarity:.3f}).")
        return second
    target = state.matching_target(first, model)
    with st.spinner("Running the second model…"):
        second = Scene(model, first.image, state.analyse(model, first.image, target))
    if first.target is None:
        st.caption(f"It explains its own prediction, {second.class_name(second.target)}.")
        return second
    name = first.class_name(first.target)
    if target is None:
        st.caption(f"It has no class “{name}”: it explains its own prediction, "
                   f"{second.class_name(second.target)}.")
    else:
        st.caption(f"It explains the same class, {name} "
                   f"({second.analysis.probabilities[target]:.0%}).")
    return second


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
                     max_upload_size=state.MAX_UPLOAD_MB, on_change=_on_image_upload,
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
                     max_upload_size=state.MAX_UPLOAD_MB, on_change=_on_image_upload,
                     kwargs={"key": "w.reference_upload", "field": "reference"})
    state.commit(replace(view, reference=ref))
    try:
        reference = None if ref is None else state.get_image(ref)
    except ValueError as error:
        _fall_back(f"{error} No reference image is used.", reference=None)
    with st.spinner("Running the model…"):
        scene = Scene(model, image, state.analyse(model, image, None, reference), reference)
    if scene.analysis.similarity is not None:
        st.caption(f"Cosine similarity of the embeddings: {scene.analysis.similarity:.3f}")
    return scene


def _random_reference() -> None:
    state.commit(replace(state.view(), reference=f"digit:{random.randrange(1_000_000)}"))


def _display_section() -> None:
    st.subheader("Display")
    widgets.option_control("opacity")
    widgets.option_control("colormap")
