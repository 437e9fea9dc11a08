"""Rotation before low-bit activations (QuaRot, Ashkboos et al. 2024; SpinQuant, Liu et al. 2024).

A few channels of the residual stream carry most of its magnitude, so a per-token INT4 grid spends
its levels on them and rounds every other channel to zero. An orthogonal Q changes nothing in float:
(W Q)(Q^T x) = W x. Stored in the rotated basis, x' = Q^T x mixes each outlier channel into all d
channels, so max|x'| / rms(x') shrinks towards that of a Gaussian vector, and 4 bits cover it.

`rotate` turns a Llama-style model into the same function in a rotated residual basis, in place:
1. Each RMSNorm's weight is folded into the linears that read its output (q/k/v, gate/up, lm_head),
   and set to 1: a norm without weight commutes with Q (it divides by ||x||, which Q keeps).
2. The embedding rows and every linear reading the residual are multiplied by Q on the right; the two
   writing into it (o_proj, down_proj) by Q^T on the left. A tied lm_head is untied first (the
   embedding and the head now differ by the final norm's weight).
3. With `online_down`, down_proj's input (silu(gate) * up, the layer's largest outliers) is rotated by
   a second orthogonal T at run time (a forward pre-hook), and down_proj's weight by T^T: no fold can
   pass through the elementwise product, so this one costs a transform per token.

The matrices: a Hadamard matrix (entries +-1/sqrt(n)) spreads every channel evenly over all the
others, but Sylvester's construction exists for powers of two only, and SmolLM2-135M's widths are not
(576 = 64 x 9, 1536 = 512 x 3). Here Q = (H_p kron R_m) diag(s): H_p the normalized Hadamard of the
largest power of two p dividing n, R_m a random orthogonal m x m matrix, s random signs (QuaRot's
randomized Hadamard; SpinQuant learns Q instead). A Kronecker product of orthogonal matrices is
orthogonal, and applying it online is two small matmuls (`kron_apply`), never an n x n one.

The residual rotation leaves every k_proj and v_proj output unchanged (W Q Q^T x = W x): a KV cache
gains nothing from it. Rotating the cache takes a rotation per head (kv_cache.KVQuantConfig.rotate).
"""
from dataclasses import dataclass

import torch

from ..calibration import decoder_layers
from ..errors import WorkshopError


@dataclass(frozen=True)
class RotationConfig:
    seed: int = 0                # the random signs and small orthogonal factors
    online_down: bool = True     # also rotate down_proj's input at run time (a Hadamard per token)
    needs_calibration = False    # the rotation is chosen at random, not fitted to data

    def __post_init__(self):
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise WorkshopError(f"seed={self.seed!r} is not a non-negative integer.", "Give e.g. seed=0.")
        if not isinstance(self.online_down, bool):
            raise WorkshopError(f"online_down={self.online_down!r} is not True or False.",
                                "Give online_down=True (rotate down_proj's input at run time) or False.")


def hadamard(n: int) -> torch.Tensor:
    """The normalized Sylvester Hadamard matrix of size `n` (a power of two), float64: orthogonal, every
    entry +-1/sqrt(n)."""
    if n < 1 or n & (n - 1):
        raise WorkshopError(f"Sylvester's Hadamard matrices have a power-of-two size, not {n}.",
                            "Use random_hadamard(n), which handles any size.")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h / n ** 0.5


def random_orthogonal(m: int, generator: torch.Generator) -> torch.Tensor:
    """A random orthogonal m x m matrix (Haar-distributed: QR of a Gaussian, signs fixed), float64."""
    q, r = torch.linalg.qr(torch.randn(m, m, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).contiguous()


@dataclass(frozen=True)
class KronRotation:
    """The orthogonal n x n matrix (hadamard_p kron small) diag(signs), kept as its factors."""
    hadamard_p: torch.Tensor   # [p, p], p the largest power of two dividing n
    small: torch.Tensor        # [m, m] random orthogonal, m = n / p
    signs: torch.Tensor        # [n] of +-1

    def matrix(self) -> torch.Tensor:
        return torch.kron(self.hadamard_p, self.small) * self.signs


def random_hadamard(n: int, generator: torch.Generator) -> KronRotation:
    p = n & -n   # the largest power of two dividing n
    signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
    return KronRotation(hadamard(p), random_orthogonal(n // p, generator), signs)


def kron_apply(x: torch.Tensor, rotation: KronRotation) -> torch.Tensor:
    """Each row of `x` [..., n] multiplied by the rotation, x -> (Q x^T)^T, without forming Q: with x
    as a p x m matrix X (row-major), (A kron B) vec(X) = vec(A X B^T)."""
    a, b = rotation.hadamard_p.to(x), rotation.small.to(x)
    rows = (x * rotation.signs.to(x)).reshape(*x.shape[:-1], a.shape[0], b.shape[0])
    return (a @ rows @ b.T).reshape(x.shape)


def fold_norm(norm, linears: list) -> None:
    """W <- W diag(norm.weight) for each linear reading the norm's output; then norm.weight <- 1."""
    for linear in linears:
        linear.weight.data = (linear.weight.double() * norm.weight.double()).to(linear.weight.dtype)
    norm.weight.data = torch.ones_like(norm.weight)


def untie_head(model) -> None:
    """Give lm_head its own weight where it shares the embedding's: the two are edited differently."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is embed.weight:
        head.weight = torch.nn.Parameter(embed.weight.detach().clone())
    model.config.tie_word_embeddings = False   # a reload or tie_weights() must not tie them again


def rotate_input(linear, q: torch.Tensor) -> None:
    """A linear (or the embedding) reading the rotated residual x' = Q^T x: W <- W Q."""
    linear.weight.data = (linear.weight.double() @ q.to(linear.weight.device)).to(linear.weight.dtype)


def rotate_output(linear, q: torch.Tensor) -> None:
    """A linear writing into the rotated residual: W <- Q^T W, b <- Q^T b."""
    q = q.to(linear.weight.device)
    linear.weight.data = (q.T @ linear.weight.double()).to(linear.weight.dtype)
    if linear.bias is not None:
        linear.bias.data = (q.T @ linear.bias.double()).to(linear.bias.dtype)


def add_online_rotation(down_proj, rotation: KronRotation) -> None:
    """down_proj reads T x at run time and holds W T^T, so its output is unchanged. The hook goes first,
    before any hook that quantizes the input (which must see the rotated input)."""
    rotate_input(down_proj, rotation.matrix().T)
    down_proj.register_forward_pre_hook(lambda module, args: (kron_apply(args[0], rotation),), prepend=True)


@torch.no_grad()
def rotate(model, config: RotationConfig, calib_batch=None, progress: bool = True):
    """The same function (up to rounding) with a randomly rotated residual stream, in place."""
    generator = torch.Generator().manual_seed(config.seed)
    layers = decoder_layers(model)
    untie_head(model)
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        fold_norm(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj])
        fold_norm(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
    fold_norm(model.model.norm, [model.get_output_embeddings()])

    q = random_hadamard(model.config.hidden_size, generator).matrix()
    rotate_input(model.get_input_embeddings(), q)   # its rows are residual vectors
    rotate_input(model.get_output_embeddings(), q)
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            rotate_input(linear, q)
        for linear in (attn.o_proj, mlp.down_proj):
            rotate_output(linear, q)
        if config.online_down:
            add_online_rotation(mlp.down_proj, random_hadamard(mlp.down_proj.in_features, generator))
    return model
