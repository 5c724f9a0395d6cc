"""Data types of the channel analysis: groups, members and tensor layouts.

A *group* is a set of channels that must be pruned together. It is born at a producer (the
output channels of a Conv, ConvTranspose, Gemm or MatMul with a constant weight) and grows by
union when two layouts meet (residual Add, attention heads). Its channels are counted in
*units* of ``block`` raw channels: ``block = 1`` for convolutions and FFNs, ``block = C / G``
once a Reshape splits the channel axis into ``G`` whole units (``[heads, head_dim]``, or the
``[G, C/G·H·W]`` of torch's exported GroupNorm), ``block = C / group`` through a grouped conv and
``C / num_groups`` through a GroupNormalization (whole conv-groups or norm groups only).

A *layout* says how a tensor's axis is made of groups: ``segs`` in order along ``axis`` (a
Concat puts several), each raw (``size`` entries) or in units (``size / block`` entries, the
heads or norm-groups axis), every entry repeated ``expand`` times (Flatten of ``[N, C, H, W]`` gives
``expand = H·W``). A *member* is one array (a node's constant input) or one Reshape dimension
that changes when the group loses channels; it records where the group's span starts along the
member's axis, so a member axis shared by several groups (a consumer after a Concat) is sliced
by one mask that all of them write into.

Also here: the small tensor helpers every rule uses (:func:`dims_of`,
:func:`rank_of`, :func:`is_static`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs


@dataclass(frozen=True)
class Seg:
    """One group's span along a tensor axis."""

    gid: int
    unit: bool = False  # the axis counts units (heads, norm groups), not raw channels


@dataclass(frozen=True)
class Layout:
    """How a tensor's ``axis`` is made of groups (see the module docstring)."""

    axis: int
    segs: tuple[Seg, ...]
    expand: int = 1


@dataclass
class Member:
    """Something that changes when a group loses channels.

    Attributes:
        node: the node's name.
        kind: ``"out"`` (producer weight/bias, output channels), ``"in"`` (consumer weight, input
            channels), ``"param"`` (a per-channel or per-unit constant: BN statistics, a bias in
            an Add, a grouped conv's weight, GroupNormalization scale/bias, the per-norm-group
            InstanceNormalization scale/bias of torch's GroupNorm), ``"shape"`` (a
            Reshape dimension, a Split size, a Slice start or end), ``"group"`` (a grouped
            conv's ``group`` or a GroupNormalization's ``num_groups`` attribute).
        index: the node's input index of the array (for ``shape``: the Reshape shape input).
        axis: the array axis (for ``shape``: the position in the shape vector).
        offset: entries before this group's span along ``axis``.
        expand: entries per channel (or unit) along ``axis``; for ``group``: channels per group.
        unit: the span counts units rather than raw channels.
    """

    node: str
    kind: str
    index: int = 0
    axis: int = 0
    offset: int = 0
    expand: int = 1
    unit: bool = False

    def describe(self) -> str:
        return f"{self.node}[{self.kind}]"


@dataclass
class Group:
    """Channels that are pruned together."""

    gid: int
    size: int  # raw channels
    block: int = 1
    members: list[Member] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # reasons the group is unprunable
    producers: list[str] = field(default_factory=list)

    @property
    def units(self) -> int:
        return self.size // self.block

    @property
    def prunable(self) -> bool:
        return not self.closed

    def raw_keep(self, kept_units: np.ndarray) -> np.ndarray:
        """Raw channel indices for the kept units."""
        kept_units = np.sort(np.asarray(kept_units, dtype=np.int64))
        if self.block == 1:
            return kept_units
        return (kept_units[:, None] * self.block + np.arange(self.block)[None, :]).reshape(-1)

    def span(self, unit: bool, expand: int) -> int:
        """Entries this group occupies along an axis."""
        return (self.units if unit else self.size) * expand


def dims_of(t: gs.Tensor) -> list | None:
    """A tensor's shape as a list (dimensions may be names), None when unknown."""
    return None if t.shape is None else list(t.shape)


def rank_of(t: gs.Tensor) -> int | None:
    """A tensor's rank, None when its shape is unknown."""
    return None if t.shape is None else len(t.shape)


def is_static(shape: list) -> bool:
    """Whether every dimension is a known non-negative integer."""
    return all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape)
