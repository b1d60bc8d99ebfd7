"""Where nncase put each operator (KPU or CPU), read from its IR dump, and the share of multiply-adds on the KPU.

With ``dump_ir`` nncase 1.x writes each graph after the last optimization pass to
``DUMP/ir_target_dependent_after_buffer_fusion/{main,k210_N}.nnir.pb`` as ONNX-style protobuf
(ModelProto -> graph -> nodes with a name and an op type). KPU work lives in the ``k210_N``
subgraphs (``KPUConv2D`` nodes); everything in ``main`` other than calls, constants and I/O runs on
the K210's CPU. A Keras convolution is located by its TensorFlow op name (``<model>/<layer>/Conv2D``
or ``.../depthwise``) inside the nncase node name, and its multiply-adds come from
``model.summary.model_macs``. The protobuf is read with a tiny wire-format decoder, so no ONNX
dependency is needed.
"""
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple, Union
from mobilefacenet_k210.errors import Mfk210Error

FINAL_GRAPH_DIR = "ir_target_dependent_after_buffer_fusion"
KPU_OPS = ("KPUConv2D",)
BOOKKEEPING_OPS = ("Call", "Constant", "Input", "Output", "Bitcast", "KPUUpload", "KPUDownload", "Ignore")
CONV_OPS = ("Conv2D", "KPUConv2D")


class PlacementError(Mfk210Error, RuntimeError):
    """nncase's IR dump is missing or not in the expected form."""


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _fields(data: bytes) -> Iterator[Tuple[int, Any]]:
    """Protobuf wire format: yield (field number, value) with length-delimited values as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        else:
            raise PlacementError(f"unsupported protobuf wire type {wire}")
        yield number, value


def read_graph_nodes(path: Union[str, Path]) -> List[Tuple[str, str]]:
    """(op type, node name) of every node in one ``.nnir.pb`` (ModelProto field 7 = graph, node = 1)."""
    path = Path(path)
    try:
        model = dict(_fields(path.read_bytes()))
        nodes = []
        for number, value in _fields(model[7]):
            if number != 1:
                continue
            fields = dict(_fields(value))
            nodes.append((fields.get(4, b"").decode("utf-8", "replace"),
                          fields.get(3, b"").decode("utf-8", "replace")))
    except (KeyError, IndexError, PlacementError) as exc:
        raise PlacementError(f"{path}: not an nncase IR dump ({exc!r})") from None
    return nodes


def _conv_candidates(node_name: str) -> List[str]:
    """Keras layers whose convolution op (``.../<layer>/Conv2D*`` or ``/depthwise*``) is named in this node.

    TFLite joins the names of everything fused into a tensor with ';', including constants it
    de-duplicated across layers (an all-zero bias of 128 values carries ``embedding_conv/Conv2D`` into
    every 128-channel projection), so a node may name several convolutions: see :func:`resolve`.
    """
    layers = []
    for piece in node_name.split(";"):
        parts = piece.split("/")
        for i in range(len(parts) - 1):
            if parts[i + 1].startswith(("Conv2D", "depthwise")) and parts[i] not in layers:
                layers.append(parts[i])
    return layers


def resolve(nodes: List[Tuple[str, List[str]]]) -> Tuple[Dict[str, str], List[str]]:
    """Assign each Keras conv layer to the one node that computes it: (layer -> device, ambiguous layers).

    ``nodes`` holds (device, candidate layers) per conv node. A node naming a single layer claims it;
    claimed layers are struck from the other nodes' candidates, and so on until nothing changes.
    Layers still shared by several nodes after that are returned as ambiguous.
    """
    pending = [(device, set(candidates)) for device, candidates in nodes if candidates]
    placed: Dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for device, candidates in pending:
            candidates.difference_update(placed)
            if len(candidates) == 1:
                placed[candidates.pop()] = device
                changed = True
        pending = [(d, c) for d, c in pending if c]
    ambiguous = sorted(set().union(*(c for _, c in pending)) if pending else set())
    return placed, ambiguous


def read_placement(dump_dir: Union[str, Path]) -> Dict[str, Any]:
    """Operators per device from an nncase IR dump: KPU op counts, CPU op counts, and conv layers per device."""
    final = Path(dump_dir) / FINAL_GRAPH_DIR
    main = final / "main.nnir.pb"
    if not main.is_file():
        raise PlacementError(f"{main}: nncase wrote no final IR graph (was dump_ir on?)")
    kpu_ops, cpu_ops = Counter(), Counter()
    conv_nodes: List[Tuple[str, List[str]]] = []
    for op, name in read_graph_nodes(main):
        if op in BOOKKEEPING_OPS:
            continue
        cpu_ops[op] += 1
        if op in CONV_OPS:
            conv_nodes.append(("cpu", _conv_candidates(name)))
    modules = sorted(final.glob("k210_*.nnir.pb"))
    for module in modules:
        for op, name in read_graph_nodes(module):
            if op in BOOKKEEPING_OPS:
                continue
            kpu_ops[op] += 1
            if op in KPU_OPS:
                conv_nodes.append(("kpu", _conv_candidates(name)))
    placed, ambiguous = resolve(conv_nodes)
    return {"kpu_modules": len(modules), "kpu_ops": dict(sorted(kpu_ops.items())),
            "cpu_ops": dict(sorted(cpu_ops.items())),
            "kpu_layers": sorted(k for k, v in placed.items() if v == "kpu"),
            "cpu_layers": sorted(k for k, v in placed.items() if v == "cpu"), "ambiguous_layers": ambiguous}


def mac_share(placement: Dict[str, Any], layer_macs: Dict[str, int]) -> Dict[str, Any]:
    """Split the Keras model's multiply-adds between KPU and CPU by where each conv layer was placed.

    A layer found in neither graph counts as not on the KPU and is listed under ``unplaced``.
    """
    kpu, cpu = set(placement["kpu_layers"]), set(placement["cpu_layers"])
    total = sum(layer_macs.values())
    kpu_macs = sum(m for name, m in layer_macs.items() if name in kpu)
    cpu_macs = {name: m for name, m in layer_macs.items() if name in cpu and name not in kpu}
    unplaced = sorted(name for name in layer_macs if name not in kpu and name not in cpu)
    return {"macs_total": total, "macs_kpu": kpu_macs, "macs_cpu": total - kpu_macs,
            "kpu_mac_share": kpu_macs / total if total else 0.0,
            "cpu_conv_layers": {k: cpu_macs[k] for k in sorted(cpu_macs)}, "unplaced_layers": unplaced}
