"""SAELens 6's training losses and their gradients (torch autograd), for tests/sae_train.rs: on
one small batch, for each architecture hooklens trains (topk, batchtopk, jumprelu with its
straight-through estimators, standard ReLU with the decoder-norm-weighted L1), with some
latents marked dead. hooklens's hand-written gradients must equal these.

In SAELens's venv (tests/reference/setup_saelens.sh):

    ~/.cache/hooklens-peers/saelens/bin/python tests/reference/make_train_grads_reference.py

Writes tests/reference/train_grads_ref.safetensors, f64: `x` [7, 6], `dead` [14] (1 = dead),
and for each architecture A: `A.W_enc` [6, 14], `A.b_enc`, `A.W_dec` [14, 6], `A.b_dec`
(`A.threshold` for jumprelu), the loss terms `A.mse_loss`, `A.aux_loss` (AuxK, the L1 or the
L0 term) and `A.grad.<parameter>` for each parameter.
"""
from pathlib import Path

import torch
from safetensors.torch import save_file
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

OUT = Path(__file__).resolve().parent / "train_grads_ref.safetensors"
D_IN, D_SAE, ROWS = 6, 14, 7

torch.manual_seed(0)
x = torch.randn(ROWS, D_IN, dtype=torch.float64)
dead = torch.zeros(D_SAE, dtype=torch.bool)
dead[::3] = True
out = {"x": x, "dead": dead.to(torch.float64)}

common = dict(d_in=D_IN, d_sae=D_SAE, dtype="float64", device="cpu")
saes = {
    # hooklens keeps TopK decoders at unit norm, where SAELens's rescale_acts_by_decoder_norm
    # (its default for topk) changes nothing; the loss without it is the one to compare.
    "topk": (
        TopKTrainingSAE(
            TopKTrainingSAEConfig(k=3, rescale_acts_by_decoder_norm=False, **common)
        ),
        {},
    ),
    "batchtopk": (
        BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(k=3, rescale_acts_by_decoder_norm=False, **common)
        ),
        {},
    ),
    "jumprelu": (
        JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                jumprelu_bandwidth=0.4, jumprelu_init_threshold=0.2, l0_coefficient=0.7, **common
            )
        ),
        {"l0": 0.7},
    ),
    "relu": (
        StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=0.3, **common)),
        {"l1": 0.3},
    ),
}
for name, (sae, coefficients) in saes.items():
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # Off the initialisation: biases, a decoder that is not the encoder's transpose and
        # rows not of unit norm, thresholds spread around the pre-activations.
        sae.W_enc.copy_(torch.randn(D_IN, D_SAE, generator=g, dtype=torch.float64) * 0.5)
        sae.b_enc.copy_(torch.randn(D_SAE, generator=g, dtype=torch.float64) * 0.3)
        sae.W_dec.copy_(torch.randn(D_SAE, D_IN, generator=g, dtype=torch.float64) * 0.5)
        sae.b_dec.copy_(torch.randn(D_IN, generator=g, dtype=torch.float64) * 0.2)
        if name == "jumprelu":
            sae.threshold.data = (
                torch.rand(D_SAE, generator=g, dtype=torch.float64) * 0.8
            ).float()
    step = TrainStepInput(
        sae_in=x,
        coefficients=coefficients,
        dead_neuron_mask=dead,
        n_training_steps=0,
        is_logging_step=False,
    )
    result = sae.training_forward_pass(step)
    result.loss.backward()
    params = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if name == "jumprelu":
        params["threshold"] = sae.threshold
    for p, t in params.items():
        out[f"{name}.{p}"] = t.detach().to(torch.float64).contiguous()
        out[f"{name}.grad.{p}"] = t.grad.detach().to(torch.float64).contiguous()
    losses = {k: float(v) for k, v in result.losses.items()}
    out[f"{name}.mse_loss"] = torch.tensor([losses.pop("mse_loss")], dtype=torch.float64)
    out[f"{name}.aux_loss"] = torch.tensor([sum(losses.values())], dtype=torch.float64)
    print(name, {k: round(float(v), 6) for k, v in result.losses.items()})

save_file(out, str(OUT))
print(f"wrote {OUT}")
