"""The PyTorch model zoo: torchvision, timm and Hugging Face transformers models, moved by role.

Nothing is downloaded: torchvision and timm models are built with ``weights=None`` /
``pretrained=False``, transformers models from tiny configs. Each case:

1. builds the model (seed 0), trains two steps with its optimizer (Adam, AdamW, fused AdamW,
   Adam over ``named_parameters()``, SGD with momentum, or two parameter groups with their own
   lr and weight decay; some with an LR scheduler), exports it with its weights, and checks that
   torch's own saved forms of that state (positional ``state_dict()``,
   ``get_optimizer_state_dict``) convert to the same slots;
2. builds it again with another seed, the way users rebuild: wrapped (``nn.DataParallel``'s or
   DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``, an ``nn.Sequential`` with
   ``mapping=``), the parameter groups listed in the other order, a layer frozen on both sides;
3. makes an import fail halfway: every weight, buffer and state entry must be as before;
4. imports with ``osf.import_state(wrapped, path, optimizer=new_opt, include_weights=True)``
   and checks every parameter and persistent buffer (BatchNorm statistics) by its
   ``state_dict()`` name, and every state entry (``exp_avg``, ``exp_avg_sq``, ``step``,
   ``momentum_buffer``...) against the source's entry for the parameter of the same
   ``named_parameters()`` name (wrapper prefix stripped), bit for bit and in torch's order: an
   oracle that does not use optstate; tied parameters still one tensor; each group's
   hyperparameters, lr included;
5. takes two more steps on both (LR schedulers too, restored with ``restore_scheduler``), same
   batches, same RNG, and checks the parameters, the buffers, the whole optimizer state and
   the groups' hyperparameters bit for bit against the uninterrupted source.

    python tests/torch/zoo.py              # every case, then the table (make zoo-torch)
    python tests/torch/zoo.py --ci         # the subset run by make test
    python tests/torch/zoo.py gpt2_lm bert # by name
"""

from __future__ import annotations

import copy
import gc
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
torch.set_num_threads(1)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---- torchvision on a CPU build of torch -------------------------------------------------------
def _torchvision_without_its_ops():
    """Import torchvision even when its compiled ops cannot load.

    The torchvision 0.28.0 wheel on the package index is the CUDA build; with the CPU build of
    torch 2.13.0 its ``_C`` extension does not load (libc10_cuda.so), and torchvision's import
    then fails registering fake kernels for ``torchvision::nms`` / ``qnms``, operators that were
    never defined. Defining their schemas (no kernel) lets the pure-Python models import; the
    ops themselves still raise torchvision's own "Couldn't load custom C++ ops" if called: the
    detectors here train without them (nms runs only when they predict); Faster/Mask R-CNN's
    RoIAlign would not."""
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod]
    global _TV_LIB
    _TV_LIB = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _TV_LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision  # noqa: F401,F811


_TV_LIB = None


# ---- cases -------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    family: str
    build: object                  # () -> nn.Module
    inputs: object                 # (model, torch.Generator) -> dict of keyword arguments
    optimizer: str = "adam"        # adam | adamw | adamw_fused | adam_named | sgd | groups
    rebuild: str = "seed"          # seed | dataparallel | compile | sequential | frozen
    freeze: str = ""               # a parameter-name prefix frozen on both sides
    loss: object = None            # output -> scalar; default: _loss
    dtype: object = None           # the model's parameters cast to this dtype (bf16 training)
    schedule: str = ""             # an LR scheduler stepped with the optimizer, exported with it


def _image(size, channels=3, batch=2):
    def make(model, g):
        x = torch.randn(batch, channels, size, size, generator=g)
        return {"x": x.to(next(model.parameters()).dtype)}
    return make


def _tokens(vocab, seq=8, batch=2, labels=False, extra=None):
    def make(model, g):
        ids = torch.randint(1, vocab, (batch, seq), generator=g)
        out = {"input_ids": ids}
        if labels:
            out["labels"] = ids.clone()
        if extra:
            out.update(extra(g))
        return out
    return make


def _tv(name, size=32, **kw):
    def build():
        import torchvision
        return getattr(torchvision.models, name)(weights=None, num_classes=10, **kw)
    return build


def _tv_seg(name, **kw):
    def build():
        import torchvision
        return getattr(torchvision.models.segmentation, name)(
            weights=None, weights_backbone=None, num_classes=3, **kw)
    return build


def _tv_det(name, **kw):
    def build():
        import torchvision
        return getattr(torchvision.models.detection, name)(
            weights=None, weights_backbone=None, num_classes=3, **kw)
    return build


def _detection_inputs(size):
    """Images and boxes: in training mode these detectors compute their losses without
    torchvision's compiled ops (nms runs only when they predict)."""
    def make(model, g):
        images = [torch.rand(3, size, size, generator=g) for _ in range(2)]
        targets = []
        for _ in images:
            xy = torch.rand(2, 2, generator=g) * size / 2
            wh = torch.rand(2, 2, generator=g) * size / 3 + 4
            targets.append({"boxes": torch.cat([xy, xy + wh], 1),
                            "labels": torch.randint(1, 3, (2,), generator=g)})
        return {"images": images, "targets": targets}
    return make


def _sum_losses(out):
    return sum(out.values())


def _timm(name, **kw):
    def build():
        import timm
        return timm.create_model(name, pretrained=False, num_classes=10, **kw)
    return build


def _hf(model_cls, config_cls, **cfg):
    def build():
        import transformers
        config = getattr(transformers, config_cls)(**cfg)
        return getattr(transformers, model_cls)(config)
    return build


_V = 64  # vocabulary of the tiny text configs
_BERT = dict(vocab_size=_V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=32, max_position_embeddings=32)
_DECODER = dict(vocab_size=_V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32)


def _whisper_inputs(model, g):
    return {"input_features": torch.randn(2, 8, 32, generator=g),
            "decoder_input_ids": torch.randint(1, _V, (2, 6), generator=g),
            "labels": torch.randint(1, _V, (2, 6), generator=g)}


def _t5_inputs(model, g):
    return {"input_ids": torch.randint(1, _V, (2, 8), generator=g),
            "labels": torch.randint(1, _V, (2, 5), generator=g)}


CASES = [
    # torchvision classification
    Case("resnet18", "torchvision", _tv("resnet18"), _image(32), "sgd", "dataparallel"),
    Case("mobilenet_v3_small", "torchvision", _tv("mobilenet_v3_small"), _image(32), "adam",
         "compile"),
    Case("efficientnet_b0", "torchvision", _tv("efficientnet_b0"), _image(32), "groups"),
    Case("convnext_tiny", "torchvision", _tv("convnext_tiny"), _image(32), "adamw",
         "sequential"),
    Case("densenet121", "torchvision", _tv("densenet121"), _image(32), "adam", "frozen",
         freeze="features.conv0"),
    Case("squeezenet1_1", "torchvision", _tv("squeezenet1_1"), _image(64), "sgd"),
    Case("shufflenet_v2_x0_5", "torchvision", _tv("shufflenet_v2_x0_5"), _image(32), "adam",
         "dataparallel"),
    Case("regnet_y_400mf", "torchvision", _tv("regnet_y_400mf"), _image(32), "groups"),
    Case("mnasnet0_5", "torchvision", _tv("mnasnet0_5"), _image(32), "adamw"),
    Case("swin_t", "torchvision", _tv("swin_t"), _image(32), "adamw", "compile"),
    Case("vit_b_16", "torchvision", _tv("vit_b_16", image_size=32), _image(32), "adam"),
    Case("googlenet", "torchvision", _tv("googlenet", aux_logits=False, init_weights=True),
         _image(32), "sgd"),
    # every stage's input must divide by the partition size 7: 224 pixels, one image
    Case("maxvit_t", "torchvision", _tv("maxvit_t"), _image(224, batch=1), "adamw"),
    # torchvision segmentation (detection models call torchvision::nms, see above)
    Case("lraspp_mobilenet_v3_large", "torchvision", _tv_seg("lraspp_mobilenet_v3_large"),
         _image(32), "adam", "dataparallel"),
    Case("deeplabv3_mobilenet_v3_large", "torchvision",
         _tv_seg("deeplabv3_mobilenet_v3_large", aux_loss=True), _image(32), "groups"),
    Case("fcos_resnet50_fpn", "torchvision",
         _tv_det("fcos_resnet50_fpn", min_size=64, max_size=64), _detection_inputs(64), "sgd",
         "dataparallel", freeze="backbone.body.conv1", loss=_sum_losses),
    Case("ssdlite320_mobilenet_v3_large", "torchvision", _tv_det("ssdlite320_mobilenet_v3_large"),
         _detection_inputs(96), "adamw", loss=_sum_losses),
    # timm
    Case("timm_vit_tiny", "timm", _timm("vit_tiny_patch16_224", img_size=32), _image(32),
         "adamw", "compile"),
    Case("timm_convnext_atto", "timm", _timm("convnext_atto"), _image(32), "groups",
         schedule="onecycle"),
    Case("timm_efficientnet_b0", "timm", _timm("efficientnet_b0"), _image(32), "adamw_fused"),
    Case("timm_resnet18", "timm", _timm("resnet18"), _image(32), "sgd", "sequential"),
    Case("timm_deit_tiny_distilled", "timm",
         _timm("deit_tiny_distilled_patch16_224", img_size=32), _image(32), "adam"),
    Case("timm_levit_128s", "timm", _timm("levit_128s", img_size=64), _image(64), "adamw"),
    Case("timm_beit_base", "timm", _timm("beit_base_patch16_224", img_size=32, depth=2),
         _image(32), "adam"),
    Case("timm_eva02_tiny", "timm", _timm("eva02_tiny_patch14_224", img_size=28), _image(28),
         "adamw"),
    Case("timm_mobilenetv3_small_050", "timm", _timm("mobilenetv3_small_050"), _image(32),
         "adam", "frozen", freeze="conv_stem"),
    Case("timm_regnetx_002", "timm", _timm("regnetx_002"), _image(32), "sgd"),
    Case("timm_swin_tiny", "timm", _timm("swin_tiny_patch4_window7_224", img_size=56),
         _image(56), "groups"),
    # transformers, tiny configs
    Case("bert", "transformers", _hf("BertModel", "BertConfig", **_BERT), _tokens(_V), "adam",
         "dataparallel"),
    # the loss ignores the pooler: it never has a gradient, so Adam never makes its state
    Case("bert_unused_pooler", "transformers", _hf("BertModel", "BertConfig", **_BERT),
         _tokens(_V), "adam", loss=lambda out: out.last_hidden_state.pow(2).mean()),
    Case("bert_mlm", "transformers", _hf("BertForMaskedLM", "BertConfig", **_BERT),
         _tokens(_V, labels=True), "groups"),
    Case("gpt2_lm", "transformers",
         _hf("GPT2LMHeadModel", "GPT2Config", vocab_size=_V, n_embd=16, n_layer=2, n_head=2,
             n_positions=32), _tokens(_V, labels=True), "adamw", "compile",
         schedule="linear_warmup"),
    Case("t5", "transformers",
         _hf("T5ForConditionalGeneration", "T5Config", vocab_size=_V, d_model=16, d_kv=8,
             d_ff=32, num_layers=2, num_heads=2, decoder_start_token_id=0, pad_token_id=0),
         _t5_inputs, "adam", "sequential"),
    Case("llama", "transformers", _hf("LlamaForCausalLM", "LlamaConfig", **_DECODER),
         _tokens(_V, labels=True), "groups"),
    Case("llama_tied", "transformers",
         _hf("LlamaForCausalLM", "LlamaConfig", tie_word_embeddings=True, **_DECODER),
         _tokens(_V, labels=True), "adamw", "frozen", freeze="model.embed_tokens"),
    Case("mistral", "transformers", _hf("MistralForCausalLM", "MistralConfig", **_DECODER),
         _tokens(_V, labels=True), "adamw_fused", "dataparallel"),
    Case("qwen2", "transformers", _hf("Qwen2ForCausalLM", "Qwen2Config", **_DECODER),
         _tokens(_V, labels=True), "sgd"),
    Case("qwen2_bf16", "transformers", _hf("Qwen2ForCausalLM", "Qwen2Config", **_DECODER),
         _tokens(_V, labels=True), "adamw", "compile", dtype=torch.bfloat16),
    # weight_norm through torch.nn.utils.parametrize (original0/original1); masked_spec_embed
    # is never used with mask_time_prob=0, so it has no state
    Case("wav2vec2", "transformers",
         _hf("Wav2Vec2Model", "Wav2Vec2Config", hidden_size=16, num_hidden_layers=1,
             num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2),
             conv_kernel=(10, 3), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
             mask_time_prob=0.0),
         lambda m, g: {"input_values": torch.randn(2, 400, generator=g)}, "adam_named",
         "dataparallel"),
    Case("mixtral", "transformers",
         _hf("MixtralForCausalLM", "MixtralConfig", num_local_experts=4, num_experts_per_tok=1,
             **_DECODER), _tokens(_V, labels=True), "adamw"),
    Case("bart", "transformers",
         _hf("BartForConditionalGeneration", "BartConfig", vocab_size=_V, d_model=16,
             encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
             decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
             max_position_embeddings=32), _tokens(_V, labels=True), "adam", "dataparallel"),
    # a parameter on the model itself (logit_scale), two towers
    Case("clip", "transformers",
         _hf("CLIPModel", "CLIPConfig",
             text_config=dict(vocab_size=_V, hidden_size=16, intermediate_size=32,
                              num_hidden_layers=1, num_attention_heads=2,
                              max_position_embeddings=16),
             vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, image_size=16, patch_size=4),
             projection_dim=8),
         lambda m, g: {"input_ids": torch.randint(1, _V, (2, 6), generator=g),
                       "pixel_values": torch.randn(2, 3, 16, 16, generator=g),
                       "return_loss": True}, "groups", "compile"),
    # one layer's weights shared by every layer (a module reached under one path)
    Case("albert", "transformers",
         _hf("AlbertModel", "AlbertConfig", vocab_size=_V, embedding_size=8, hidden_size=16,
             num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=32), _tokens(_V), "adam"),
    Case("deberta_v2", "transformers",
         _hf("DebertaV2Model", "DebertaV2Config", vocab_size=_V, hidden_size=16,
             num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=32, relative_attention=True, pos_att_type=["p2c", "c2p"],
             max_relative_positions=8), _tokens(_V), "adamw"),
    Case("gemma", "transformers",
         _hf("GemmaForCausalLM", "GemmaConfig", head_dim=8, **_DECODER),
         _tokens(_V, labels=True), "adam", "dataparallel"),
    Case("roberta", "transformers", _hf("RobertaModel", "RobertaConfig", **_BERT),
         _tokens(_V), "adam_named", "compile"),
    Case("distilbert", "transformers",
         _hf("DistilBertModel", "DistilBertConfig", vocab_size=_V, dim=16, n_layers=2, n_heads=2,
             hidden_dim=32, max_position_embeddings=32), _tokens(_V), "adam"),
    Case("vit_hf", "transformers",
         _hf("ViTModel", "ViTConfig", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=32, image_size=16, patch_size=4),
         lambda m, g: {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}, "adam"),
    Case("whisper", "transformers",
         _hf("WhisperForConditionalGeneration", "WhisperConfig", vocab_size=_V, num_mel_bins=8,
             d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
             decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
             max_source_positions=16, max_target_positions=16, decoder_start_token_id=1,
             pad_token_id=0, bos_token_id=1, eos_token_id=2), _whisper_inputs, "adamw",
         "sequential"),
]
BY_NAME = {c.name: c for c in CASES}
# The representative subset run by `make test` (tests/torch/test_torch_zoo.py): every
# optimizer kind and every way of rebuilding, BatchNorm buffers, a frozen layer, tied
# embeddings, an unused pooler (no gradient, no state), torchvision, timm and transformers.
CI = ["resnet18", "mobilenet_v3_small", "densenet121", "timm_vit_tiny", "timm_convnext_atto",
      "timm_resnet18", "lraspp_mobilenet_v3_large", "bert_unused_pooler", "gpt2_lm", "t5",
      "llama_tied", "mistral", "qwen2_bf16", "wav2vec2", "bart", "whisper"]


# ---- one case ----------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    family: str
    optimizer: str = ""
    rebuild: str = ""
    params: int = 0
    tensors: int = 0
    entries_checked: int = 0
    export_s: float = 0.0
    import_s: float = 0.0
    case_s: float = 0.0
    status: str = "ok"
    detail: str = ""
    notes: list = field(default_factory=list)


def make_optimizer(kind, wrapped, reverse=False):
    """The case's optimizer over ``model``'s trainable parameters; ``groups``: biases and
    norms without weight decay at one lr, the rest with decay at another (``reverse``: the
    groups listed in the other order, as a rebuilt training script may)."""
    params = [(n, p) for n, p in wrapped.named_parameters() if p.requires_grad]
    if kind == "adam":
        return torch.optim.Adam([p for _, p in params], lr=1e-3)
    if kind == "adamw":
        return torch.optim.AdamW([p for _, p in params], lr=1e-3, weight_decay=0.05)
    if kind == "adamw_fused":  # torch's fused CPU kernel: float32 step counters, always
        return torch.optim.AdamW([p for _, p in params], lr=1e-3, fused=True)
    if kind == "adam_named":  # torch >= 2.6: groups keep the parameters' names (param_names)
        return torch.optim.Adam(params, lr=1e-3)
    if kind == "sgd":
        return torch.optim.SGD([p for _, p in params], lr=0.01, momentum=0.9)
    assert kind == "groups"
    no_decay = [p for n, p in params if p.dim() <= 1]
    decay = [p for n, p in params if p.dim() > 1]
    groups = [{"params": decay, "lr": 2e-3, "weight_decay": 0.1},
              {"params": no_decay, "lr": 1e-3, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups[::-1] if reverse else groups)


def wrap(model, how):
    """(wrapped model, prefix its parameter names gain)."""
    if how == "dataparallel":  # DataParallel and DistributedDataParallel both hold `module`
        return nn.DataParallel(model), "module."
    if how == "compile":  # lazy: nothing is compiled until it is called, which we never do
        return torch.compile(model), "_orig_mod."
    if how == "sequential":
        return nn.Sequential(model), "0."
    return model, ""


def _loss(out):
    """A scalar from any model output: the model's own loss if it computed one, else the mean
    square of every floating tensor it returned."""
    loss = getattr(out, "loss", None)
    if isinstance(out, dict) and out.get("loss") is not None:
        loss = out["loss"]
    if loss is not None:
        return loss
    tensors = []

    def collect(o):
        if isinstance(o, torch.Tensor):
            if o.is_floating_point() and o.requires_grad:
                tensors.append(o)
        elif isinstance(o, dict):
            for v in o.values():
                collect(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                collect(v)
    collect(out if not hasattr(out, "to_tuple") else out.to_tuple())
    return sum(t.float().pow(2).mean() for t in tensors)


def make_scheduler(kind, opt):
    """``linear_warmup``: Hugging Face's get_linear_schedule_with_warmup (a LambdaLR: its
    function is not data, the rest is); ``onecycle``: OneCycleLR, which also cycles Adam's
    beta1 in every group."""
    if kind == "linear_warmup":
        import transformers
        return transformers.get_linear_schedule_with_warmup(opt, 2, 10)
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10)
    return None


def train_step(case, model, opt, i, scheduler=None):
    g = torch.Generator().manual_seed(1000 + i)
    kwargs = case.inputs(model, g)
    model.train()
    torch.manual_seed(2000 + i)  # dropout, drop-path, MoE jitter: the same draws on both sides
    opt.zero_grad(set_to_none=True)
    if "x" in kwargs:
        out = model(kwargs["x"])
    else:
        out = model(**kwargs)
    (case.loss or _loss)(out).backward()
    opt.step()
    if scheduler is not None:
        scheduler.step()


def _built(case):
    model = case.build()
    if case.dtype is not None:
        model = model.to(case.dtype)
    for n, p in model.named_parameters():
        if case.freeze and n.startswith(case.freeze):
            p.requires_grad_(False)
    return model


def _equal(a, b):
    """Bitwise equality (NaN payloads and -0.0 included) of tensors, else ==."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        def raw(t):
            return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        return (a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
                and torch.equal(raw(a), raw(b)))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return type(a) is type(b) and a == b


def state_by_name(model, opt, prefix=""):
    """{parameter name without ``prefix``: {state key: value}}: torch's own names, not
    optstate's."""
    names = {id(p): n[len(prefix):] if n.startswith(prefix) else n
             for n, p in model.named_parameters()}
    return {names[id(p)]: s for p, s in opt.state.items()}


def compare_states(src_model, src_opt, dst_model, dst_opt, prefix, where):
    """Every state entry of every parameter, by torch's parameter name; returns the count."""
    a = state_by_name(src_model, src_opt)
    b = state_by_name(dst_model, dst_opt, prefix)
    a = {n: s for n, s in a.items() if s}
    b = {n: s for n, s in b.items() if s}
    assert set(a) == set(b), (f"{where}: state for other parameters: only in the source "
                              f"{sorted(set(a) - set(b))[:5]}, only in the rebuilt "
                              f"{sorted(set(b) - set(a))[:5]}")
    # torch creates state in the order of the optimizer's own parameters
    order = {id(p): i for i, p in enumerate(p for g in dst_opt.param_groups for p in g["params"])}
    ranks = [order[id(p)] for p, s in dst_opt.state.items() if s]
    assert ranks == sorted(ranks), f"{where}: optimizer.state is not in parameter order"
    checked = 0
    for n in a:
        assert list(a[n]) == list(b[n]), f"{where}: {n}: keys {list(a[n])} != {list(b[n])}"
        for k in a[n]:
            assert _equal(a[n][k], b[n][k]), f"{where}: {n}: {k} differs"
            checked += 1
    return checked


def compare_groups(src_opt, dst_opt, src_model, dst_model, prefix, where):
    """Each group's hyperparameters (lr included), paired through the parameters it holds."""
    def keyed(model, opt, pre):
        names = {id(p): n[len(pre):] if n.startswith(pre) else n
                 for n, p in model.named_parameters()}
        return {frozenset(names[id(p)] for p in g["params"]):
                {k: v for k, v in g.items() if k not in ("params", "param_names")}
                for g in opt.param_groups}
    a, b = keyed(src_model, src_opt, ""), keyed(dst_model, dst_opt, prefix)
    assert set(a) == set(b), f"{where}: parameter groups split differently"
    for k in a:
        assert a[k] == b[k], f"{where}: group hyperparameters {a[k]} != {b[k]}"


def compare_tensors(src, dst, where):
    sa, sb = src.state_dict(), dst.state_dict()
    assert list(sa) == list(sb), f"{where}: state_dict keys differ"
    for k in sa:
        assert _equal(sa[k], sb[k]), f"{where}: {k} differs"


def _ties(model):
    """Sets of names under which one parameter is reachable (tied weights)."""
    by_id = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n)
    return sorted(sorted(v) for v in by_id.values() if len(v) > 1)


def check_positional_conversions(case, model, opt, exported):
    """What torch itself saves, converted: ``optimizer.state_dict()`` (keyed by position, as a
    Trainer's optimizer.pt) with an optimizer built the same way, and the fully qualified
    names of ``get_optimizer_state_dict``, must give the exported slots."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from optstate_format.converters import torch as conv
    sd = opt.state_dict()
    converted = [conv.from_state_dict(model, make_optimizer(case.optimizer, model), sd),
                 conv.from_dcp_state_dict(model, opt, get_optimizer_state_dict(model, opt))]
    want = {w.path: w.slots for w in exported.weights if w.slots}
    for state in converted:
        got = {w.path: w.slots for w in state.weights if w.slots}
        assert set(got) == set(want), f"{case.name}: the conversion has state for other weights"
        for path, slots in want.items():
            assert set(got[path]) == set(slots), f"{case.name}: {path}: converted slots differ"
            for k, v in slots.items():
                assert np.asarray(got[path][k]).tobytes() == np.asarray(v).tobytes(), (
                    f"{case.name}: {path}: converted {k} differs")


def check_failed_import_changes_nothing(case, wrapped, dst, dst_opt, path, mapping, fail_at):
    """An import that fails at its ``fail_at``-th assignment (after weights and state were
    assigned and created) is rolled back: every weight, buffer and state entry, and the
    order of the optimizer's state, as before."""
    import optstate_format as osf
    from optstate_format.converters import torch as conv
    weights = {k: v.clone() for k, v in dst.state_dict().items()}
    opt_before = copy.deepcopy(dst_opt.state_dict())
    real, calls = conv.ADAPTER.adopt, []

    def failing(handle, value):
        calls.append(handle)
        if len(calls) == fail_at:
            raise RuntimeError("injected failure")
        real(handle, value)
    conv.ADAPTER.adopt = failing
    try:
        osf.import_state(wrapped, path, optimizer=dst_opt, mapping=mapping, include_weights=True)
        raise AssertionError(f"{case.name}: the injected failure did not fail the import")
    except osf.OptStateError:
        pass
    finally:
        del conv.ADAPTER.adopt
    assert len(calls) == fail_at, f"{case.name}: the import made {len(calls)} assignments"
    where = f"{case.name} after a failed import"
    after = dst.state_dict()
    assert list(after) == list(weights), f"{where}: state_dict keys changed"
    assert all(_equal(weights[k], after[k]) for k in weights), f"{where}: a weight changed"
    assert _same(opt_before, dst_opt.state_dict()), f"{where}: the optimizer changed"


def _same(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return _equal(a, b)


def run_case(case, workdir, row):
    """Train, export, rebuild, import, check, continue, filling ``row``; raises
    AssertionError on a wrong value."""
    import optstate_format as osf
    torch.manual_seed(0)
    src = _built(case)
    src_opt = make_optimizer(case.optimizer, src)
    src_sched = make_scheduler(case.schedule, src_opt)
    row.params = sum(p.numel() for p in src.parameters())
    for i in range(2):
        train_step(case, src, src_opt, i, src_sched)
    path = Path(workdir) / f"{case.name}.optstate"
    t = time.perf_counter()
    osf.export_state(src, path, optimizer=(src_opt, src_sched) if src_sched else src_opt,
                     include_weights=True, fsync=False)
    row.export_s = time.perf_counter() - t
    row.tensors = len(osf.read_header(path)["weights"])
    check_positional_conversions(case, src, src_opt, osf.read(path))

    torch.manual_seed(1)  # another initialisation: every value must come from the source
    dst = _built(case)
    wrapped, prefix = wrap(dst, case.rebuild)
    dst_opt = make_optimizer(case.optimizer, wrapped, reverse=True)
    dst_sched = make_scheduler(case.schedule, dst_opt)
    own_names = [g.get("param_names") for g in dst_opt.param_groups]
    mapping = None
    if case.rebuild == "sequential":
        # a wrapper the user wrote adds a position ("0/") to every path and a level to every
        # identity: refused, changing nothing; the user says where the model went
        lrs = [g["lr"] for g in dst_opt.param_groups]
        weights = {k: v.clone() for k, v in dst.state_dict().items()}
        try:
            osf.import_state(wrapped, path, optimizer=dst_opt, include_weights=True)
            raise AssertionError(f"{case.name}: an import into nn.Sequential(model) without "
                                 "mapping= was not refused")
        except osf.MatchError:
            assert not dst_opt.state and lrs == [g["lr"] for g in dst_opt.param_groups], (
                f"{case.name}: a refused import changed the optimizer")
            assert all(_equal(v, dst.state_dict()[k]) for k, v in weights.items()), (
                f"{case.name}: a refused import changed the weights")

        def mapping(file_path):
            return "0/" + file_path
    # halfway through the tensors: weights, and state the import had to create, assigned
    check_failed_import_changes_nothing(case, wrapped, dst, dst_opt, path, mapping,
                                        fail_at=row.tensors)
    t = time.perf_counter()
    report = osf.import_state(wrapped, path, optimizer=dst_opt, mapping=mapping,
                              include_weights=True)
    row.import_s = time.perf_counter() - t
    assert report.ok, f"{case.name}: import not ok: {report}"
    row.notes = list(report.notes)
    if dst_sched is not None:
        from optstate_format.converters.torch import restore_scheduler
        restore_scheduler(dst_sched, path)

    where = f"{case.name} after import"
    compare_tensors(src, dst, where)  # parameters and persistent buffers, by torch's names
    row.entries_checked = compare_states(src, src_opt, wrapped, dst_opt, prefix, where)
    assert row.entries_checked > 0
    compare_groups(src_opt, dst_opt, src, wrapped, prefix, where)
    assert own_names == [g.get("param_names") for g in dst_opt.param_groups], (
        f"{where}: the groups' param_names are no longer the rebuilt model's")
    assert _ties(src) == _ties(dst), f"{where}: tied parameters differ"
    if src_sched is not None:
        a, b = src_sched.state_dict(), dst_sched.state_dict()
        a.pop("lr_lambdas", None), b.pop("lr_lambdas", None)  # functions: not data
        assert a == b, f"{where}: scheduler state {b} != {a}"

    for i in (2, 3):
        train_step(case, src, src_opt, i, src_sched)
        train_step(case, dst, dst_opt, i, dst_sched)
    where = f"{case.name} two steps later"
    compare_tensors(src, dst, where)
    compare_states(src, src_opt, wrapped, dst_opt, prefix, where)
    compare_groups(src_opt, dst_opt, src, wrapped, prefix, where)
    path.unlink()
    del src, dst, wrapped, src_opt, dst_opt
    gc.collect()


def run_all(selected, out=sys.stdout):
    """Run ``selected`` cases, printing one line per case as it ends; return the rows."""
    from optstate_format import OptStateError
    _torchvision_without_its_ops()
    rows = []
    with tempfile.TemporaryDirectory(prefix="optstate-torch-zoo-") as workdir:
        for case in selected:
            t = time.perf_counter()
            row = Row(case.name, case.family, case.optimizer, case.rebuild)
            try:
                run_case(case, workdir, row)
            except OptStateError as e:
                row.status, row.detail = "refused", f"{type(e).__name__}: {e}"[:2000]
            except AssertionError as e:
                row.status, row.detail = "WRONG", str(e)[:2000]
            except Exception as e:  # a model this environment cannot build or train
                row.status, row.detail = "error", f"{type(e).__name__}: {str(e)[:300]}"
                traceback.print_exc(file=sys.stderr)
            row.case_s = time.perf_counter() - t
            rows.append(row)
            print(f"[zoo] {row.model} | {row.family} | {row.optimizer} | {row.rebuild} | "
                  f"{row.params:,} | {row.tensors} | {row.entries_checked} | "
                  f"{row.export_s:.2f} | {row.import_s:.2f} | {row.case_s:.1f} | {row.status} | "
                  f"{row.detail[:400]}", file=out, flush=True)
            gc.collect()
    return rows


def table(rows):
    head = ("model", "family", "optimizer", "rebuilt as", "params", "tensors",
            "entries checked", "export s", "import s", "case s", "result")
    lines = []
    for r in rows:
        lines.append((r.model, r.family, r.optimizer, r.rebuild, f"{r.params:,}", str(r.tensors),
                      str(r.entries_checked), f"{r.export_s:.2f}", f"{r.import_s:.2f}",
                      f"{r.case_s:.1f}",
                      r.status if r.status == "ok" else f"{r.status}: {r.detail[:160]}"))
    from helpers import markdown_table
    text = markdown_table(head, lines)
    ok = sum(r.status == "ok" for r in rows)
    text.append(f"\n{ok} of {len(rows)} models imported by role and continued bit for bit, "
                f"{sum(r.entries_checked for r in rows)} state entries checked by name")
    return "\n".join(text)


def cases(only=(), ci=False):
    if only:
        unknown = [n for n in only if n not in BY_NAME]
        if unknown:
            raise SystemExit(f"unknown cases {unknown}; known: {sorted(BY_NAME)}")
        return [BY_NAME[n] for n in only]
    return [BY_NAME[n] for n in CI] if ci else list(CASES)


def main(argv):
    only = [a for a in argv if not a.startswith("--")]
    selected = cases(only, "--ci" in argv)
    for a in argv:  # --rebuild=seed: every case rebuilt that way (to tell causes apart)
        if a.startswith("--rebuild="):
            selected = [replace(c, rebuild=a.split("=", 1)[1]) for c in selected]
    rows = run_all(selected)
    print(table(rows))
    return 0 if rows and all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
