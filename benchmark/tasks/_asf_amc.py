"""CMU motion capture: the ASF skeleton and AMC motion formats, and forward kinematics.

An ASF file describes a skeleton (bones with a rest direction, a length, a local frame ``axis``
and rotational degrees of freedom, and a hierarchy); an AMC file gives, frame by frame, the root's
translation and rotation and each bone's rotation angles. :func:`forward_kinematics` turns one
frame into joint positions: the root plus the far end of every bone.

Conventions (those of the preprocessed CMU "run" data set, ``datasets/cmu_mocap/CARD.md``)
------------------------------------------------------------------------------------------
* Joint order: the root first, then the bones in depth-first pre-order of the hierarchy, children
  in the order the ``:hierarchy`` section lists them. :meth:`Skeleton.edges` gives the bones as
  ``(child, parent)`` joint-index pairs in that order.
* Units and axes: the files' own numbers, unscaled (the ASF ``:units length`` factor is not
  applied) and in the files' own axes (CMU: ``y`` up).
* Rotations are active and right-handed; Euler angles are applied in the order named, the first
  named first: ``axis ax ay az XYZ`` gives ``C = Rz(az) Ry(ay) Rx(ax)``, and a bone whose ``dof``
  reads ``rx ry rz`` turns by ``E = Rz(rz) Ry(ry) Rx(rx)``; the root turns by its ``RX RY RZ``
  channels in the order of its ``axis`` line.
* A bone's global rotation is ``M = M_parent C E C^-1`` (the root's: its ``E``); its far end is
  ``p = p_parent + length * M direction``; the root is at its ``TX TY TZ`` channels.

Only what CMU's files use is accepted: ``XYZ`` axis orders, rotational ``dof`` channels, a root
``position`` and ``orientation`` of zero. Anything else, and any malformed line, raises
:class:`AsfAmcError` with one line naming the file and line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["AsfAmcError", "Bone", "Skeleton", "parse_asf", "parse_amc", "forward_kinematics",
           "motion_positions", "euler_matrix", "convert", "write_npz"]

_ROT_CHANNELS = ("rx", "ry", "rz")
_ROOT_CHANNELS = ("tx", "ty", "tz", "rx", "ry", "rz")


class AsfAmcError(ValueError):
    """A malformed or unsupported ASF/AMC file; the message is one line naming the file and line."""


@dataclass(frozen=True)
class Bone:
    """One ASF bone: rest ``direction`` (3,), ``length``, local frame ``C`` (3, 3) and ``dof``
    channel names in the order the AMC file gives their values."""

    name: str
    direction: np.ndarray
    length: float
    frame: np.ndarray
    dof: tuple[str, ...]


@dataclass(frozen=True)
class Skeleton:
    """A parsed ASF skeleton.

    ``names[0]`` is ``"root"``; ``parents[i]`` is the joint index of joint ``i``'s parent (``-1``
    for the root); ``bones`` maps every other name to its :class:`Bone`.
    """

    names: tuple[str, ...]
    parents: tuple[int, ...]
    bones: Mapping[str, Bone]
    root_channels: tuple[str, ...]
    radians: bool = False

    def edges(self) -> np.ndarray:
        """The bones as ``(child, parent)`` joint-index pairs, shape (J - 1, 2), int64."""
        return np.array([(i, p) for i, p in enumerate(self.parents) if p >= 0], dtype=np.int64).reshape(-1, 2)


def _rot(axis: str, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    if axis == "x":
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    if axis == "y":
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def euler_matrix(angles: Sequence[float], order: Sequence[str]) -> np.ndarray:
    """``R_{order[-1]} ... R_{order[0]}``: the rotations about ``order``'s axes (``"x"``, ``"y"``,
    ``"z"``) by ``angles`` (radians), the first applied first.

    >>> bool(np.allclose(euler_matrix([math.pi / 2], ["z"]) @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]))
    True
    """
    m = np.eye(3)
    for axis, angle in zip(order, angles):
        m = _rot(axis, angle) @ m
    return m


def _where(source: str, lineno: int) -> str:
    return f"{source}:{lineno}"


def _floats(tokens: Sequence[str], n: int, source: str, lineno: int, what: str) -> list[float]:
    if len(tokens) != n:
        raise AsfAmcError(f"{_where(source, lineno)}: {what} needs {n} numbers, got {len(tokens)}")
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise AsfAmcError(f"{_where(source, lineno)}: {what}: {' '.join(tokens)!r} is not {n} numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise AsfAmcError(f"{_where(source, lineno)}: {what}: values must be finite")
    return values


def _sections(text: str) -> list[tuple[str, int, list[str], list[tuple[int, list[str]]]]]:
    """``(keyword, lineno, tokens after it, [(lineno, tokens), ...])`` per ``:section``."""
    out: list = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        if tokens[0].startswith(":"):
            out.append((tokens[0][1:].lower(), lineno, tokens[1:], []))
        elif out:
            out[-1][3].append((lineno, tokens))
        else:
            raise AsfAmcError(f"{lineno}: text before the first section")
    return out


def parse_asf(text: str, source: str = "<asf>") -> Skeleton:
    """Parse an ASF skeleton (see the module docstring for what is supported)."""
    radians = False
    root_channels: tuple[str, ...] | None = None
    raw_bones: dict[str, Bone] = {}
    children: dict[str, list[str]] = {}
    seen_hierarchy = False
    try:
        sections = _sections(text)
    except AsfAmcError as exc:
        raise AsfAmcError(f"{source}:{exc}") from None
    for key, lineno, head, body in sections:
        if key == "units":
            for ln, toks in body:
                if toks[0].lower() == "angle":
                    if len(toks) != 2 or toks[1].lower() not in ("deg", "rad"):
                        raise AsfAmcError(f"{_where(source, ln)}: angle unit must be deg or rad")
                    radians = toks[1].lower() == "rad"
        elif key == "root":
            for ln, toks in body:
                word = toks[0].lower()
                if word == "order":
                    chans = tuple(t.lower() for t in toks[1:])
                    if sorted(chans) != sorted(_ROOT_CHANNELS):
                        raise AsfAmcError(f"{_where(source, ln)}: root order must name TX TY TZ RX RY RZ once each")
                    root_channels = chans
                elif word == "axis":
                    if len(toks) != 2 or toks[1].upper() != "XYZ":
                        raise AsfAmcError(f"{_where(source, ln)}: unsupported root axis order "
                                          f"{' '.join(toks[1:])!r} (only XYZ)")
                elif word in ("position", "orientation"):
                    if any(v != 0.0 for v in _floats(toks[1:], 3, source, ln, f"root {word}")):
                        raise AsfAmcError(f"{_where(source, ln)}: unsupported non-zero root {word}")
        elif key == "bonedata":
            current: dict | None = None
            for ln, toks in body:
                word = toks[0].lower()
                if word == "begin":
                    if current is not None:
                        raise AsfAmcError(f"{_where(source, ln)}: 'begin' inside a bone")
                    current = {"line": ln, "dof": ()}
                    continue
                if current is None:
                    raise AsfAmcError(f"{_where(source, ln)}: {toks[0]!r} outside a begin/end block")
                if word == "end":
                    for need in ("name", "direction", "length", "axis"):
                        if need not in current:
                            raise AsfAmcError(f"{_where(source, current['line'])}: bone without {need}")
                    name = current["name"]
                    if name in raw_bones or name == "root":
                        raise AsfAmcError(f"{_where(source, ln)}: bone {name!r} defined twice")
                    raw_bones[name] = Bone(name, np.array(current["direction"]), current["length"],
                                           current["axis"], current["dof"])
                    current = None
                elif word == "name":
                    if len(toks) != 2:
                        raise AsfAmcError(f"{_where(source, ln)}: a bone name is one word")
                    current["name"] = toks[1]
                elif word == "direction":
                    current["direction"] = _floats(toks[1:], 3, source, ln, "direction")
                elif word == "length":
                    current["length"] = _floats(toks[1:], 1, source, ln, "length")[0]
                elif word == "axis":
                    if len(toks) != 5 or toks[4].upper() != "XYZ":
                        raise AsfAmcError(f"{_where(source, ln)}: bone axis must be 'axis AX AY AZ XYZ' "
                                          "(only the XYZ order is supported)")
                    angles = _floats(toks[1:4], 3, source, ln, "axis")
                    angles = angles if radians else [math.radians(a) for a in angles]
                    current["axis"] = euler_matrix(angles, "xyz")
                elif word == "dof":
                    dof = tuple(t.lower() for t in toks[1:])
                    bad = [d for d in dof if d not in _ROT_CHANNELS]
                    if bad or len(set(dof)) != len(dof) or not dof:
                        raise AsfAmcError(f"{_where(source, ln)}: unsupported dof {' '.join(toks[1:])!r} "
                                          "(rotations rx, ry, rz, each at most once)")
                    current["dof"] = dof
                # id, limits (and their continuation lines), bodymass, cofmass: not needed for positions
            if current is not None:
                raise AsfAmcError(f"{_where(source, current['line'])}: bone block without 'end'")
        elif key == "hierarchy":
            seen_hierarchy = True
            inside = False
            for ln, toks in body:
                if toks[0].lower() == "begin" and len(toks) == 1:
                    inside = True
                    continue
                if toks[0].lower() == "end" and len(toks) == 1:
                    inside = False
                    continue
                if not inside or len(toks) < 2:
                    raise AsfAmcError(f"{_where(source, ln)}: hierarchy lines are 'PARENT CHILD...' between begin and end")
                children.setdefault(toks[0], []).extend(toks[1:])
    if root_channels is None:
        raise AsfAmcError(f"{source}: no ':root' section with an 'order' line")
    if not seen_hierarchy:
        raise AsfAmcError(f"{source}: no ':hierarchy' section")
    names: list[str] = []
    parents: list[int] = []
    stack: list[tuple[str, int]] = [("root", -1)]
    while stack:                                      # depth-first pre-order, children in listed order
        name, parent = stack.pop()
        if name in names:
            raise AsfAmcError(f"{source}: bone {name!r} appears twice in the hierarchy")
        if name != "root" and name not in raw_bones:
            raise AsfAmcError(f"{source}: the hierarchy names bone {name!r}, which :bonedata does not define")
        index = len(names)
        names.append(name)
        parents.append(parent)
        stack.extend((child, index) for child in reversed(children.get(name, [])))
    missing = sorted(set(raw_bones) - set(names))
    if missing:
        raise AsfAmcError(f"{source}: bones not in the hierarchy: {', '.join(missing)}")
    unknown = sorted(set(children) - set(names))
    if unknown:
        raise AsfAmcError(f"{source}: the hierarchy names bone {unknown[0]!r}, which is not reachable from root")
    return Skeleton(tuple(names), tuple(parents), raw_bones, root_channels, radians)


def parse_amc(text: str, source: str = "<amc>") -> list[dict[str, tuple[float, ...]]]:
    """Parse an AMC motion: one ``{bone name: values}`` dict per frame, in file order. Frame
    numbers must count up by one."""
    frames: list[dict[str, tuple[float, ...]]] = []
    number = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith(":"):
            continue
        tokens = line.split()
        if len(tokens) == 1 and tokens[0].isdigit():
            n = int(tokens[0])
            if number is not None and n != number + 1:
                raise AsfAmcError(f"{_where(source, lineno)}: frame {n} follows frame {number}")
            number = n
            frames.append({})
            continue
        if not frames:
            raise AsfAmcError(f"{_where(source, lineno)}: bone values before the first frame number")
        name = tokens[0]
        if name in frames[-1]:
            raise AsfAmcError(f"{_where(source, lineno)}: bone {name!r} given twice in frame {number}")
        frames[-1][name] = tuple(_floats(tokens[1:], len(tokens) - 1, source, lineno, f"bone {name!r}"))
    if not frames:
        raise AsfAmcError(f"{source}: no frames")
    return frames


def forward_kinematics(skeleton: Skeleton, frame: Mapping[str, Sequence[float]], where: str = "frame") -> np.ndarray:
    """Joint positions (J, 3) of one AMC frame (see the module docstring for the formulas)."""
    to_rad = (lambda v: v) if skeleton.radians else math.radians
    J = len(skeleton.names)
    pos = np.zeros((J, 3))
    rot = np.zeros((J, 3, 3))
    root = frame.get("root")
    if root is None or len(root) != len(skeleton.root_channels):
        raise AsfAmcError(f"{where}: root needs {len(skeleton.root_channels)} values, got "
                          f"{'none' if root is None else len(root)}")
    values = dict(zip(skeleton.root_channels, root))
    pos[0] = [values["tx"], values["ty"], values["tz"]]
    rot[0] = euler_matrix([to_rad(values[c]) for c in _ROT_CHANNELS], "xyz")
    for i in range(1, J):
        name = skeleton.names[i]
        bone = skeleton.bones[name]
        given = frame.get(name, ())
        if len(given) != len(bone.dof):
            raise AsfAmcError(f"{where}: bone {name!r} has {len(bone.dof)} dof, got {len(given)} values")
        local = euler_matrix([to_rad(v) for v in given], [d[1] for d in bone.dof])
        p = skeleton.parents[i]
        rot[i] = rot[p] @ bone.frame @ local @ bone.frame.T
        pos[i] = pos[p] + bone.length * (rot[i] @ bone.direction)
    extra = sorted(set(frame) - set(skeleton.names))
    if extra:
        raise AsfAmcError(f"{where}: bone {extra[0]!r} is not in the skeleton")
    return pos


def motion_positions(skeleton: Skeleton, frames: Sequence[Mapping[str, Sequence[float]]],
                     source: str = "<amc>") -> np.ndarray:
    """Joint positions of every frame, shape (T, J, 3), float64."""
    return np.stack([forward_kinematics(skeleton, f, where=f"{source}: frame {t + 1}")
                     for t, f in enumerate(frames)])


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise AsfAmcError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def convert(asf: str | Path, amcs: Sequence[str | Path]) -> dict[str, np.ndarray]:
    """The arrays of a motion data file (the layout of ``datasets/cmu_mocap/run.npz``): ``bones``
    (J - 1, 2) int64, ``joints`` (J,) the joint names, and ``trial_00``, ``trial_01``, ... (T_k,
    J, 3) float64, trial ``k`` being the ``k``-th file of ``amcs``."""
    if not amcs:
        raise AsfAmcError("no AMC files given")
    asf = Path(asf)
    skeleton = parse_asf(_read(asf), str(asf))
    out: dict[str, np.ndarray] = {"bones": skeleton.edges(), "joints": np.array(skeleton.names)}
    for k, amc in enumerate(amcs):
        amc = Path(amc)
        out[f"trial_{k:02d}"] = motion_positions(skeleton, parse_amc(_read(amc), str(amc)), str(amc))
    return out


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> str:
    """Write ``arrays`` as a compressed npz file (through a temporary file and a rename) and
    return its sha256."""
    import hashlib
    import io

    from benchmark.fileio import write_bytes_atomic

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()
