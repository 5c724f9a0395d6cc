"""The changed-region drawing: layers by longest path, producers above consumers, every node
drawn with its name in a tooltip."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from onnxopt.html.graphview import draw, layout, shorten

NS = "{http://www.w3.org/2000/svg}"


def node(name, op, inputs, outputs, changed=True):
    return {"name": name, "op": op, "inputs": inputs, "outputs": outputs, "changed": changed}


def test_layers_follow_the_longest_path():
    nodes = [
        node("a", "Conv", ["x"], ["t1"]),
        node("b", "Relu", ["t1"], ["t2"]),
        node("c", "Add", ["t1", "t2"], ["y"]),  # longest path: a -> b -> c
    ]
    layers, edges = layout(nodes)
    assert layers == [[0], [1], [2]]
    assert sorted(edges) == [(0, 1), (0, 2), (1, 2)]


def test_draw_places_producers_above_consumers():
    nodes = [
        node("in", "Relu", ["x"], ["t"], changed=False),
        node("conv", "Conv", ["t"], ["u"]),
        node("bn", "BatchNormalization", ["u"], ["y"]),
    ]
    svg = draw({"nodes": nodes, "truncated": 0}, "before", "before")
    root = ET.fromstring(svg)
    rects = root.findall(f".//{NS}rect")
    ys = [float(r.get("y")) for r in rects]
    assert len(rects) == 3 and ys == sorted(ys) and len(set(ys)) == 3
    assert len(root.findall(f".//{NS}path")) == 4  # 2 edges, each a curve and an arrow head
    assert 'class="node context"' in svg and 'class="node before"' in svg
    assert "BatchNormalization &#x27;bn&#x27;" in svg


def test_shorten_keeps_both_ends():
    assert shorten("/encoder/layer.11/attention/self/MatMul_1", 20) == "/encoder/…f/MatMul_1"
    assert shorten("short", 20) == "short"


def test_a_layer_with_unconnected_nodes_keeps_them_in_order():
    # three consumers of one tensor, one with no producer inside the region
    nodes = [
        node("p", "Conv", ["x"], ["t"]),
        node("q", "Relu", ["t"], ["u"]),
        node("r", "Relu", ["z"], ["v"]),
        node("s", "Add", ["u", "v"], ["y"]),
        node("w", "Neg", ["k"], ["m"]),
    ]
    layers, _ = layout(nodes)
    assert sorted(n for layer in layers for n in layer) == list(range(5))
    assert layers[0] == [0, 2, 4] and layers[-1] == [3]
