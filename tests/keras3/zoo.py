"""The model zoo: models people actually train, built without downloads, moved by role.

Every ``keras.applications`` constructor (``weights=None``, ``include_top=False`` with average
pooling, at a small valid input size), ``keras_hub`` backbones built from tiny configs, and every
``tf_keras.applications`` constructor with tf_keras's Adam and its legacy Adam. Each
case: build, train one Adam step, export; build the same architecture again (at another input
size where the architecture allows it) in this process, after every model built before it moved
Keras's name counters; import; then check every Adam slot of the rebuilt model against the
source model's slot for the weight at the same place (index of its layer in ``model.layers``,
index of the weight in ``layer.weights``): an oracle that does not use optstate's identities.

    python tests/zoo.py             # every case, then the table (make zoo)
    python tests/zoo.py --ci        # the representative subset run by make test
    python tests/zoo.py ConvNeXtTiny GPT2Backbone
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

import numpy as np  # noqa: E402

# Input sizes (export, import) for the applications whose minimum is above 32 pixels.
APP_SIZES = {"InceptionV3": (75, 91), "InceptionResNetV2": (75, 91), "Xception": (71, 87)}
# The representative subset that runs in `make test` (about two minutes together).
# ConvNeXtTiny: LayerScale's unnamed weights; DenseNet121: concatenations; DINOV2: LayerScale in
# keras_hub. NASNetMobile (1124 weights) costs as much as three of these: `make zoo` only.
CI = {"ConvNeXtTiny", "MobileNetV3Small", "EfficientNetB0", "DenseNet121",
      "GPT2Backbone", "BertBackbone", "LlamaBackbone", "ViTBackbone", "DINOV2Backbone",
      "tf_keras.MobileNetV2", "tf_keras.legacy.MobileNet"}

_TEXT = dict(vocabulary_size=64, num_layers=2, hidden_dim=16, intermediate_dim=32)
# keras_hub backbones at tiny dimensions: class name -> constructor arguments.
HUB = {
    "GPT2Backbone": dict(_TEXT, num_heads=2, max_sequence_length=32),
    "BertBackbone": dict(_TEXT, num_heads=2, max_sequence_length=32),
    "RobertaBackbone": dict(_TEXT, num_heads=2, max_sequence_length=32),
    "XLMRobertaBackbone": dict(_TEXT, num_heads=2, max_sequence_length=32),
    "DistilBertBackbone": dict(_TEXT, num_heads=2, max_sequence_length=32),
    "OPTBackbone": dict(_TEXT, num_heads=2, max_sequence_length=32),
    "BartBackbone": dict(_TEXT, num_heads=2, max_sequence_length=32),
    "GPTNeoXBackbone": dict(_TEXT, num_heads=2, max_sequence_length=32),
    "FNetBackbone": dict(_TEXT, max_sequence_length=32),
    "DebertaV3Backbone": dict(_TEXT, num_heads=2, max_sequence_length=32, bucket_size=8),
    "AlbertBackbone": dict(_TEXT, num_heads=2, embedding_dim=8, num_groups=1,
                           num_inner_repetitions=1, max_sequence_length=32),
    "ElectraBackbone": dict(vocab_size=64, num_layers=2, num_heads=2, hidden_dim=16,
                            embedding_dim=8, intermediate_dim=32, max_sequence_length=32),
    "T5Backbone": dict(_TEXT, num_heads=2),
    "BloomBackbone": dict(_TEXT, num_heads=2),
    "FalconBackbone": dict(_TEXT, num_attention_heads=2),
    "LlamaBackbone": dict(_TEXT, num_query_heads=2, num_key_value_heads=1),
    "Llama3Backbone": dict(_TEXT, num_query_heads=2, num_key_value_heads=1),
    "MistralBackbone": dict(_TEXT, num_query_heads=2, num_key_value_heads=1),
    "MixtralBackbone": dict(_TEXT, num_query_heads=2, num_key_value_heads=1, num_experts=2,
                            top_k=1),
    "GemmaBackbone": dict(_TEXT, num_query_heads=2, num_key_value_heads=1, head_dim=8),
    "Phi3Backbone": dict(_TEXT, num_query_heads=2, num_key_value_heads=1),
    "QwenBackbone": dict(_TEXT, num_query_heads=2, num_key_value_heads=1),
    "Qwen3Backbone": dict(_TEXT, num_query_heads=2, num_key_value_heads=1, head_dim=8),
    "ViTBackbone": dict(image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2,
                        hidden_dim=16, mlp_dim=32),
    "DeiTBackbone": dict(image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2,
                         hidden_dim=16, intermediate_dim=32),
    "DINOV2Backbone": dict(patch_size=4, num_layers=2, hidden_dim=16, num_heads=2,
                           intermediate_dim=32, image_shape=(16, 16, 3)),
    "XLNetBackbone": dict(_TEXT, num_heads=2),
    "ESM2Backbone": dict(_TEXT, num_heads=2, max_sequence_length=32),
    "RoformerV2Backbone": dict(_TEXT, num_heads=2, head_size=8),
    "Qwen3MoeBackbone": dict(_TEXT, num_query_heads=2, num_key_value_heads=1,
                             moe_intermediate_dim=16, num_experts=2, head_dim=8, top_k=1),
    "GptOssBackbone": dict(_TEXT, num_query_heads=2, num_key_value_heads=1, num_experts=2,
                           top_k=1, head_dim=8),
    "Gemma3Backbone": dict(_TEXT, image_size=None, num_query_heads=2, num_key_value_heads=1,
                           head_dim=8),
    "WhisperBackbone": dict(_TEXT, num_heads=2, num_mels=8, max_encoder_sequence_length=32,
                            max_decoder_sequence_length=16),
    "MiTBackbone": dict(layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2],
                        layerwise_sr_ratios=[2, 1], max_drop_path_rate=0.0,
                        layerwise_patch_sizes=[3, 3], layerwise_strides=[2, 2],
                        image_shape=(32, 32, 3), hidden_dims=[8, 16]),
    "SwinTransformerBackbone": dict(image_shape=(32, 32, 3), embed_dim=8, depths=[1, 1],
                                    num_heads=[1, 2], window_size=4, patch_size=2),
    "DenseNetBackbone": dict(stackwise_num_repeats=[1, 1], image_shape=(32, 32, 3),
                             growth_rate=8),
    "VGGBackbone": dict(stackwise_num_repeats=[1, 1], stackwise_num_filters=[8, 16],
                        image_shape=(32, 32, 3)),
    "ResNetBackbone": dict(input_conv_filters=[64], input_conv_kernel_sizes=[3],
                           stackwise_num_filters=[64, 64], stackwise_num_blocks=[1, 1],
                           stackwise_num_strides=[1, 2], block_type="basic_block",
                           image_shape=(None, None, 3)),
}


@dataclass
class Row:
    model: str
    family: str
    params: int = 0
    weights: int = 0
    slots_checked: int = 0
    export_s: float = 0.0
    import_s: float = 0.0
    train_s: float = 0.0
    status: str = "ok"
    detail: str = ""
    notes: list = field(default_factory=list)


def application_names():
    import keras
    return sorted(n for n in dir(keras.applications)
                  if n[0].isupper() and callable(getattr(keras.applications, n)))


def tf_keras_application_names():
    try:
        import tf_keras
    except ImportError:  # pragma: no cover - tf_keras is part of the test install
        return []
    return sorted(n for n in dir(tf_keras.applications)
                  if n[0].isupper() and callable(getattr(tf_keras.applications, n)))


def cases(only=(), ci=False):
    """(name, family) of every case, in run order. tf_keras's applications run twice: with
    its Adam (``tf_keras.<Name>``) and its legacy Adam (``tf_keras.legacy.<Name>``)."""
    out = [(n, "keras_hub") for n in HUB]
    out += [(n, "keras.applications") for n in application_names()]
    out += [(f"tf_keras{kind}.{n}", "tf_keras.applications")
            for n in tf_keras_application_names() for kind in ("", ".legacy")]
    if ci:
        out = [c for c in out if c[0] in CI]
    if only:
        out = [c for c in out if c[0] in only]
    return out


def build(name, family, variant):
    """(compiled model, batch) for case ``name``; ``variant`` 0 is the source, 1 the rebuild."""
    import keras
    rng = np.random.default_rng(variant)
    if family == "tf_keras.applications":
        return build_tf_keras(name, rng, variant)
    if family == "keras.applications":
        size = APP_SIZES.get(name, (32, 48))[variant]
        model = getattr(keras.applications, name)(weights=None, include_top=False,
                                                  input_shape=(size, size, 3), pooling="avg")
        x = rng.standard_normal((2, size, size, 3)).astype("float32")
    else:
        import keras_hub
        model = getattr(keras_hub.models, name)(**HUB[name])
        x = hub_inputs(model, rng, seq=(8, 12)[variant])
    if family == "keras.applications":  # static shapes: no forward pass needed
        shapes = keras.tree.map_structure(lambda t: (2,) + tuple(t.shape[1:]), model.output)
    else:  # sequence models may downsample: the shapes of one forward pass
        shapes = keras.tree.map_structure(lambda t: tuple(t.shape), model(x))
    y = keras.tree.map_shape_structure(lambda s: rng.standard_normal(s).astype("float32"),
                                       shapes)
    # one eager step: tracing a whole network into a graph would cost more than the step
    model.compile(keras.optimizers.Adam(1e-3), "mse", run_eagerly=True)
    return model, (x, y)


def build_tf_keras(name, rng, variant):
    """A tf_keras application (``tf_keras[.legacy].<Name>``) compiled with tf_keras's Adam, or
    its legacy Adam (slots in ``get_slot``, another code path of the converter)."""
    import tf_keras
    app = name.rsplit(".", 1)[1]
    size = APP_SIZES.get(app, (32, 48))[variant]
    model = getattr(tf_keras.applications, app)(weights=None, include_top=False,
                                                input_shape=(size, size, 3), pooling="avg")
    x = rng.standard_normal((2, size, size, 3)).astype("float32")
    y = rng.standard_normal((2,) + tuple(model.output.shape[1:])).astype("float32")
    adam = (tf_keras.optimizers.legacy.Adam if ".legacy." in name else tf_keras.optimizers.Adam)
    model.compile(adam(1e-3), "mse", run_eagerly=True)
    return model, (x, y)


def hub_inputs(model, rng, seq):
    xs = {}
    inputs = model.input if isinstance(model.input, dict) else {"x": model.input}
    for name, t in inputs.items():
        shape = tuple(2 if i == 0 else (seq if d is None else int(d))
                      for i, d in enumerate(t.shape))
        if "int" in str(t.dtype) or "bool" in str(t.dtype):
            if "mask" in name:
                v = np.ones(shape, "int32")
            elif "segment" in name:
                v = np.zeros(shape, "int32")
            else:
                v = rng.integers(1, 60, shape).astype("int32")
        else:
            v = rng.standard_normal(shape).astype("float32")
        xs[name] = v
    return xs if isinstance(model.input, dict) else xs["x"]


def slot_arrays(model):
    """{(layer index, weight index): (m, v)} for every trainable weight, by place."""
    opt = model.optimizer
    tf_keras = type(model).__module__.startswith("tf_keras")
    out, seen = {}, set()
    for li, layer in enumerate(model.layers):
        for wi, w in enumerate(layer.weights):
            if id(w) in seen or not w.trainable:
                continue
            seen.add(id(w))
            if tf_keras and hasattr(opt, "get_slot"):  # tf_keras's legacy optimizer
                m, v = opt.get_slot(w, "m"), opt.get_slot(w, "v")
            elif tf_keras:
                i = opt._index_dict[opt._var_key(w)]
                m, v = opt._momentums[i], opt._velocities[i]
            else:
                i = opt._get_variable_index(w)
                m, v = opt._momentums[i], opt._velocities[i]
            out[(li, wi)] = (np.array(m.numpy()), np.array(v.numpy()))
    return out


def move_counters(family=""):
    """Build a few unrelated layers with generated names: every counter moves on."""
    from unnamed_models import move_counters as mc
    if family == "tf_keras.applications":
        import tf_keras
        mc(tf_keras, 2)
        return
    import keras
    mc(keras, 2)


def run_case(name, family, workdir):
    """Export, rebuild, import, check. Returns a Row; raises on a wrong slot."""
    import optstate_format as osf
    row = Row(name, family)
    a, batch = build(name, family, 0)
    t = time.perf_counter()
    a.train_on_batch(*batch)
    row.train_s = time.perf_counter() - t
    row.params = int(a.count_params())
    path = Path(workdir) / f"{name}.optstate"
    t = time.perf_counter()
    osf.export_state(a, path, fsync=False)
    row.export_s = time.perf_counter() - t
    row.weights = len(osf.read_header(path)["weights"])
    source = slot_arrays(a)
    names_a = [layer.name for layer in a.layers]
    del a, batch
    gc.collect()
    move_counters(family)
    b, _ = build(name, family, 1)
    names_b = [layer.name for layer in b.layers]
    t = time.perf_counter()
    report = osf.import_state(b, path)
    row.import_s = time.perf_counter() - t
    path.unlink()
    target = slot_arrays(b)
    assert set(target) == set(source), "the rebuilt model has other trainable weights"
    for key, (m, v) in target.items():
        sm, sv = source[key]
        where = f"{name}: layer {key[0]} ({names_b[key[0]]}, was {names_a[key[0]]}) weight {key[1]}"
        np.testing.assert_array_equal(m, sm, err_msg=where)
        np.testing.assert_array_equal(v, sv, err_msg=where)
        row.slots_checked += 2
    assert report.ok and row.slots_checked == 2 * len(source) > 0
    row.notes = list(report.notes)
    del b
    gc.collect()
    return row


def run_all(selected, out=sys.stdout):
    """Run ``selected`` cases, printing one line per case as it ends; return the rows."""
    from optstate_format import OptStateError
    rows = []
    with tempfile.TemporaryDirectory(prefix="optstate-zoo-") as workdir:
        for name, family in selected:
            t = time.perf_counter()
            try:
                row = run_case(name, family, workdir)
            except OptStateError as e:
                row = Row(name, family, status="refused", detail=f"{e.code}: {e}")
            except ImportError as e:
                row = Row(name, family, status="not built", detail=f"{type(e).__name__}: {e}")
            except AssertionError as e:
                row = Row(name, family, status="WRONG", detail=str(e)[:2000])
            except Exception as e:  # a model this environment cannot build or train
                row = Row(name, family, status="not built",
                          detail=f"{type(e).__name__}: {str(e)[:300]}")
                traceback.print_exc(file=sys.stderr)
            rows.append(row)
            print(f"[zoo] {name} | {family} | {row.params:,} | {row.weights} | "
                  f"{row.slots_checked} | {row.export_s:.2f} | {row.import_s:.2f} | {row.status}"
                  f" | case {time.perf_counter() - t:.0f} s, train {row.train_s:.0f} s | "
                  f"{row.detail[:300]}", file=out, flush=True)
    return rows


def table(rows):
    head = ("model", "family", "params", "weights", "slots checked", "export s", "import s",
            "result")
    lines = []
    for r in rows:
        lines.append((r.model, r.family, f"{r.params:,}", str(r.weights), str(r.slots_checked),
                      f"{r.export_s:.2f}", f"{r.import_s:.2f}",
                      r.status if r.status == "ok" else f"{r.status}: {r.detail[:160]}"))
    from helpers import markdown_table
    text = markdown_table(head, lines)
    ok = sum(r.status == "ok" for r in rows)
    text.append(f"\n{ok} of {len(rows)} models imported by role, "
                f"{sum(r.slots_checked for r in rows)} slots checked against their layer")
    return "\n".join(text)


def main(argv):
    ci = "--ci" in argv
    only = [a for a in argv if not a.startswith("--")]
    rows = run_all(cases(only, ci))
    print(table(rows))
    return 0 if all(r.status in ("ok", "refused", "not built") for r in rows) and any(
        r.status == "ok" for r in rows) and not any(r.status == "WRONG" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
