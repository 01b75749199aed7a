"""How Keras 3 and tf_keras name the registry's optimizers, slots and globals.

The core's registry (``optstate_format/_registry.py``) knows algorithms and canonical slot
names only; these tables are the Keras side of the mapping, kept beside the converters
that use them (and shown, informatively, in spec/optimizers.md). No framework is imported
here.
"""

from optstate_format._registry import FrameworkNames

KERAS3 = FrameworkNames(
    "keras3", "Keras 3 (`keras.optimizers`; slots: attribute holding the per-variable list)",
    classes={
        "sgd": "SGD",
        "rmsprop": "RMSprop",
        "adam": "Adam",
        "adamw": "AdamW",
        "adadelta": "Adadelta",
        "adagrad": "Adagrad",
        "adamax": "Adamax",
        "adafactor": "Adafactor",
        "nadam": "Nadam",
        "ftrl": "Ftrl",
        "lion": "Lion",
        "lamb": "Lamb",
        "muon": "Muon",
        "schedule_free_adamw": "ScheduleFreeAdamW",
    },
    slots={
        "sgd": {"momentums": "momentum"},
        "rmsprop": {
            "_velocities": "velocity",
            "_momentums": "momentum",
            "_average_gradients": "average_gradient",
        },
        "adam": {"_momentums": "m", "_velocities": "v", "_velocity_hats": "v_hat"},
        "adamw": {"_momentums": "m", "_velocities": "v", "_velocity_hats": "v_hat"},
        "adadelta": {
            "_accumulated_grads": "accumulated_grad",
            "_accumulated_delta_vars": "accumulated_delta",
        },
        "adagrad": {"_accumulators": "accumulator"},
        "adamax": {"_m": "m", "_u": "u"},
        "adafactor": {"_r": "r", "_c": "c", "_v": "v"},
        "nadam": {"_momentums": "m", "_velocities": "v"},
        "ftrl": {"_accumulators": "accumulator", "_linears": "linear"},
        "lion": {"_momentums": "m"},
        "lamb": {"_momentums": "m", "_velocities": "v"},
        "muon": {"momentums": "m", "adam_velocities": "v"},
        "schedule_free_adamw": {"_momentums": "z", "_velocities": "v"},
    },
    common_slots={
        "_model_variables_moving_average": "ema",
        "_accumulated_gradients": "gradient_accumulator",
    },
    globals={"nadam": {"_u_product": "u_product"}},
)

# tf_keras's optimizers (the generation Keras 3 grew from) keep Keras 3's names for the
# algorithms the two share; only Lion names its list of momentums without the underscore.
_TF_KERAS_ALGORITHMS = ("sgd", "rmsprop", "adam", "adamw", "adadelta", "adagrad", "adamax",
                        "adafactor", "nadam", "ftrl", "lion")
TF_KERAS = FrameworkNames(
    "tf_keras", "tf_keras (`tf_keras.optimizers`; slots: attribute holding the per-variable list)",
    classes={a: KERAS3.classes[a] for a in _TF_KERAS_ALGORITHMS},
    slots={**{a: dict(KERAS3.slots[a]) for a in _TF_KERAS_ALGORITHMS}, "lion": {"momentums": "m"}},
    common_slots=dict(KERAS3.common_slots),
    globals={a: dict(g) for a, g in KERAS3.globals.items() if a in _TF_KERAS_ALGORITHMS},
)

TF_KERAS_LEGACY = FrameworkNames(
    "tf_keras_legacy", "tf_keras legacy (`tf_keras.optimizers.legacy`; slots: slot name)",
    classes={
        "sgd": "SGD",
        "rmsprop": "RMSprop",
        "adam": "Adam",
        "adadelta": "Adadelta",
        "adagrad": "Adagrad",
        "adamax": "Adamax",
        "nadam_legacy": "Nadam",
        "ftrl": "Ftrl",
    },
    slots={
        "sgd": {"momentum": "momentum"},
        "rmsprop": {"rms": "velocity", "momentum": "momentum", "mg": "average_gradient"},
        "adam": {"m": "m", "v": "v", "vhat": "v_hat"},
        "adadelta": {"accum_grad": "accumulated_grad", "accum_var": "accumulated_delta"},
        "adagrad": {"accumulator": "accumulator"},
        "adamax": {"m": "m", "v": "u"},
        "nadam_legacy": {"m": "m", "v": "v"},
        "ftrl": {"accumulator": "accumulator", "linear": "linear"},
    },
    common_slots={},
    globals={"nadam_legacy": {"_m_cache": "u_product"}},
)
