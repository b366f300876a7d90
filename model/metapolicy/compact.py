"""Small checkpoints for big clusters: the per-slot table in int8.

A node-set policy's only per-node weights are its slot table, `hidden` float32 numbers per
node: 1.3 MB at 5,000 nodes and hidden 64, more than a ConfigMap holds (1 MiB) once gzipped
and base64-encoded. Above `COMPACT_ABOVE` slots the table is kept on an int8 grid instead:
each row is `codes * 2**exponent` with int8 codes and one power-of-two scale per row (at most
half a step off, a step being 1/64..1/127 of the row's largest entry). Powers of two make the
round trip exact: a table on the grid is stored and loaded bit for bit, and snapping it again
changes nothing.

The adaptation pipeline and initial training snap a candidate onto the grid *before* it is
validated (`snap`), so the version that serves is exactly the one that was validated. Tables of
at most `COMPACT_ABOVE` slots (every cluster the operator could run before) stay float32.

Masked equivalence is kept: snapping never moves a row that is already on the grid (the
survivors of a resize of a snapped policy), only the new rows, and those are masked.
"""

from __future__ import annotations

import torch

from metapolicy.policy import SlotPolicy

COMPACT_ABOVE = 256  # slots
TABLE = "slot_table"
CODES = "slot_table.int8"
EXPONENTS = "slot_table.exp2"
_CODE_MAX = 127


def compacts(policy: SlotPolicy) -> bool:
    """Whether this policy's checkpoint keeps its slot table on the int8 grid."""
    return policy.scores_subsets and policy.size > COMPACT_ABOVE


def quantize(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, hidden) float -> (int8 codes, int8 power-of-two exponent per row)."""
    table = table.detach().float().cpu()
    peak = table.abs().amax(1)
    exponent = torch.ceil(torch.log2(peak / _CODE_MAX)).nan_to_num(0.0, 0.0, 0.0)
    exponent = torch.where(peak > 0, exponent, torch.zeros_like(exponent)).clamp(-120, 120)
    codes = torch.round(table / torch.exp2(exponent)[:, None]).clamp(-_CODE_MAX, _CODE_MAX)
    return codes.to(torch.int8), exponent.to(torch.int8)


def dequantize(codes: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    return codes.float() * torch.exp2(exponent.float())[:, None]


def snap(policy: SlotPolicy) -> SlotPolicy:
    """Put the slot table on the grid it will be stored on (in place; no-op below the size)."""
    if compacts(policy):
        table = policy.get_parameter(TABLE)
        with torch.no_grad():
            table.copy_(dequantize(*quantize(table)).to(table.device))
    return policy


def pack(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as stored: the slot table as codes + exponents."""
    out = dict(tensors)
    codes, exponent = quantize(out.pop(TABLE))
    return out | {CODES: codes, EXPONENTS: exponent}


def unpack(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored tensors -> a state dict (unchanged if the table was stored as it is)."""
    if CODES not in tensors:
        return tensors
    out = dict(tensors)
    return out | {TABLE: dequantize(out.pop(CODES), out.pop(EXPONENTS))}
