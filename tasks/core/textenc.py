"""Text encoding that skips the padding a causal text tower never looks at.

open_clip pads every caption to the context length (77) and runs the text transformer over all of it.
Under a causal attention mask the pooled token (the end-of-text token for ``argmax`` / ``eos`` pooling)
sees only the positions before it, so the padding after it cannot change the embedding: running the
transformer over just the first ``L`` positions, where ``L`` is the longest caption in the batch, gives
the same embeddings for a fraction of the work. Captions of very different lengths (a vehicle's
"This is a white Audi Sedan." is ~9 tokens, a pedestrian's description ~50) are encoded in two length
groups, each cut to its own longest caption.

Every real CLIP text tower (ViT-B-16, ViT-L-14, ViT-bigG-14 ...) is causal with argmax pooling. A tower
without a causal mask (``no_causal_mask``: padding is attended to), another pooling, or a custom text
model (``CustomTextCLIP``: HF towers) is encoded by open_clip's own ``encode_text``, unchanged.
tests/core/test_textenc.py checks the equality against ``encode_text`` and the gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TRIMMED_POOLS = ("argmax", "eos")
SPLIT_MIN_SAVING = 0.15   # two length groups when they save at least this share of a single group's work


def trims(model: torch.nn.Module) -> bool:
    """Whether ``model``'s text tower can skip trailing padding without changing its output."""
    return (all(hasattr(model, name) for name in ("token_embedding", "positional_embedding", "transformer",
                                                   "ln_final"))
            and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", None) in TRIMMED_POOLS)


def lengths(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Positions each row needs: up to and including its pooled token."""
    if model.text_pool_type == "argmax":
        last = tokens.argmax(dim=-1)
    else:
        last = (tokens == model.text_eos_id).int().argmax(dim=-1)
    return last + 1


def _encode(model: torch.nn.Module, tokens: torch.Tensor, length: int) -> torch.Tensor:
    """open_clip's CLIP.encode_text over the first ``length`` positions (unnormalised)."""
    cast_dtype = model.transformer.get_cast_dtype()
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    from open_clip.transformer import text_global_pool
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
            else x @ model.text_projection
    return x


def split_point(sorted_lengths: list[int]) -> int | None:
    """Where to cut lengths sorted ascending into two groups (each run to its own maximum), or None
    when one group costs at most ``SPLIT_MIN_SAVING`` more (the work counted as rows x positions)."""
    n = len(sorted_lengths)
    if n < 2:
        return None
    single = n * sorted_lengths[-1]
    best, where = single, None
    for k in range(1, n):
        cost = k * sorted_lengths[k - 1] + (n - k) * sorted_lengths[-1]
        if cost < best:
            best, where = cost, k
    return where if where is not None and best <= (1 - SPLIT_MIN_SAVING) * single else None


def encode_text(model: torch.nn.Module, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """``model.encode_text(tokens)``, computed over the positions that matter (see the module's doc)."""
    if not trims(model) or tokens.shape[0] == 0:
        return model.encode_text(tokens, normalize=normalize)
    need = lengths(model, tokens)
    order = torch.argsort(need, stable=True)
    sorted_need = need[order].tolist()
    cut = split_point(sorted_need)
    if cut is None:
        x = _encode(model, tokens, sorted_need[-1])
    else:
        short, long = order[:cut], order[cut:]
        parts = [_encode(model, tokens[short], sorted_need[cut - 1]), _encode(model, tokens[long], sorted_need[-1])]
        x = torch.empty((tokens.shape[0], parts[0].shape[1]), dtype=parts[0].dtype, device=parts[0].device)
        x = x.index_copy(0, short, parts[0]).index_copy(0, long, parts[1])
    return F.normalize(x, dim=-1) if normalize else x


class ClipForward(torch.nn.Module):
    """The training forward of an open_clip CLIP model with the trimmed text encoding: (normalised image
    features, normalised text features, logit scale), as ``CLIP.forward`` returns them. Wraps the model
    (no copy) so that DistributedDataParallel sees the same parameters."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        image_features = self.model.encode_image(image, normalize=True)
        text_features = encode_text(self.model, text, normalize=True)
        return image_features, text_features, self.model.logit_scale.exp()
